//! Apache Kafka for the tests: KRaft clusters of one or more combined broker+controller
//! JVMs on free loopback ports, each storing into the test's temp dir.
//!
//! The jars come from Maven Central (`scripts/setup.sh`'s `ensure_kafka`, found through
//! `TRENDFLOW_KAFKA_LIBS`); the shared broker settings from `scripts/kafka/server.properties`.
//! Storage is formatted once per test binary (one `StorageTool` JVM) and copied for every
//! node, with the node's own id written into its `meta.properties`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::support::{repo, wait_for_port};

/// A Kafka cluster for one test; every node is killed when it is dropped.
pub struct Broker {
    nodes: Vec<Node>,
    /// The bootstrap list, `127.0.0.1:PORT[,…]`.
    pub addr: String,
    dir: tempfile::TempDir,
}

struct Node {
    id: i32,
    port: u16,
    controller_port: u16,
    child: Option<Child>,
}

impl Broker {
    /// A one-node cluster.
    pub fn start() -> Self {
        Self::cluster(1)
    }

    /// A cluster of `size` nodes. Topics (the offsets and transaction topics too) are
    /// replicated to every node, at most 3, with two in sync: losing one broker loses
    /// no acknowledged record and no committed offset.
    pub fn cluster(size: usize) -> Self {
        let nodes: Vec<Node> = (1..=size as i32).map(|id| Node { id, port: free_port(), controller_port: free_port(), child: None }).collect();
        let addr = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",");
        let mut broker = Self { nodes, addr, dir: tempfile::tempdir().unwrap() };
        for index in 0..size {
            broker.prepare(index);
        }
        broker.spawn();
        broker
    }

    /// Writes node `index`'s config and its formatted (copied) storage.
    fn prepare(&self, index: usize) {
        let node = &self.nodes[index];
        let home = self.node_dir(node.id);
        std::fs::create_dir_all(&home).unwrap();
        let voters = self.nodes.iter().map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port)).collect::<Vec<_>>().join(",");
        let replicas = self.nodes.len().min(3);
        let config = format!(
            "{shared}\nnode.id={id}\nlisteners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\ncontroller.quorum.voters={voters}\n\
             log.dirs={data}\noffsets.topic.replication.factor={replicas}\n\
             transaction.state.log.replication.factor={replicas}\ntransaction.state.log.min.isr={isr}\n\
             default.replication.factor={replicas}\nmin.insync.replicas={isr}\n",
            shared = std::fs::read_to_string(repo().join("scripts/kafka/server.properties")).unwrap(),
            id = node.id,
            port = node.port,
            cport = node.controller_port,
            data = home.join("data").display(),
            isr = replicas.min(2),
        );
        std::fs::write(home.join("server.properties"), config).unwrap();
        copy_formatted(&formatted_template().join("data"), &home.join("data"), node.id);
    }

    fn node_dir(&self, id: i32) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Starts every node that is not running and waits until the cluster answers with
    /// all of them. All start before any is waited for: a node opens its broker port
    /// only once the controller quorum has formed.
    pub fn spawn(&mut self) {
        let stopped: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_none()).collect();
        for &index in &stopped {
            self.start_node(index);
        }
        for &index in &stopped {
            let node = &self.nodes[index];
            let log = self.node_dir(node.id).join("broker.log");
            wait_for_port(&format!("127.0.0.1:{}", node.port), &format!("Kafka broker {} (log: {})", node.id, log.display()), 90);
        }
        self.wait_for_brokers(self.nodes.len());
    }

    fn start_node(&mut self, index: usize) {
        let home = self.node_dir(self.nodes[index].id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(home.join("broker.log")).unwrap();
        let child = Command::new(java())
            // A small heap and a quick start: tests move little data.
            .args(["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"])
            .arg(format!("-Dlog4j2.configurationFile={}", repo().join("scripts/kafka/log4j2.properties").display()))
            .arg("-cp")
            .arg(kafka_classpath())
            .arg("kafka.Kafka")
            .arg(home.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("java starts the Kafka broker");
        self.nodes[index].child = Some(child);
    }

    /// Waits until the metadata of the cluster lists `count` brokers.
    fn wait_for_brokers(&self, count: usize) {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = consumer.fetch_metadata(None, Duration::from_secs(5)).map(|m| m.brokers().len()).unwrap_or(0);
            if seen >= count {
                return;
            }
            assert!(Instant::now() < deadline, "the Kafka cluster at {} shows {seen} of {count} brokers", self.addr);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills every node (SIGKILL); their data stays for [`Broker::spawn`].
    pub fn kill(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill_node(self.nodes[index].id);
        }
    }

    /// Kills node `id` (SIGKILL), as a lost machine would stop.
    pub fn kill_node(&mut self, id: i32) {
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no Kafka node {id}"));
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node leading `topic`'s `partition` (-1 for none) and its in-sync replicas, as
    /// the cluster reports them now.
    pub fn leader_of(&self, topic: &str, partition: i32) -> (i32, Vec<i32>) {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let topic = metadata.topics().iter().find(|t| t.name() == topic).unwrap_or_else(|| panic!("no topic `{topic}`"));
        let found = topic.partitions().iter().find(|p| p.id() == partition).unwrap_or_else(|| panic!("no partition {partition}"));
        (found.leader(), found.isr().to_vec())
    }

    /// Grows `topic` by one partition with a real CreatePartitions request.
    pub async fn add_partition(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let count = trendflow_connectors::kafka::partition_count(&consumer, &self.addr, topic).unwrap().expect("the topic exists");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_partitions([&NewPartitions::new(topic, count as usize + 1)], &options).await.unwrap();
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("cannot add a partition to `{name}`: {code}"));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the brokers said (their temp dir goes with them).
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(self.node_dir(node.id).join("broker.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- Kafka node {} (last lines of broker.log)", node.id);
                tail.iter().rev().for_each(|line| eprintln!("{line}"));
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME").map(|home| PathBuf::from(home).join("bin/java")).unwrap_or_else(|| "java".into())
}

/// The directory of the broker's jars, as a Java class path (`DIR/*`).
fn kafka_classpath() -> String {
    let libs = std::env::var_os("TRENDFLOW_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/trendflow/kafka-4.1.1"));
    assert!(
        libs.join(".pom.sha256").exists(),
        "no Apache Kafka jars in {}: run scripts/test.sh, which installs them (or set TRENDFLOW_KAFKA_LIBS)",
        libs.display()
    );
    format!("{}/*", libs.display())
}

/// Storage formatted once per test binary by Kafka's own `StorageTool` (node 1); nodes
/// get copies of it.
fn formatted_template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let config = dir.path().join("format.properties");
            std::fs::write(
                &config,
                format!(
                    "{}\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:9\n\
                     listeners=PLAINTEXT://127.0.0.1:8,CONTROLLER://127.0.0.1:9\nlog.dirs={}\n",
                    std::fs::read_to_string(repo().join("scripts/kafka/server.properties")).unwrap(),
                    data.display()
                ),
            )
            .unwrap();
            let output = Command::new(java())
                .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp"])
                .arg(kafka_classpath())
                .args(["kafka.tools.StorageTool", "format", "--ignore-formatted", "--cluster-id", CLUSTER_ID, "--config"])
                .arg(&config)
                .output()
                .expect("java runs Kafka's StorageTool");
            assert!(output.status.success(), "formatting Kafka storage failed: {}", String::from_utf8_lossy(&output.stderr));
            dir
        })
        .path()
}

/// Any valid cluster id (base64 of 16 bytes); clusters of different tests never meet.
const CLUSTER_ID: &str = "dHJlbmRmbG93LXRlc3RzLQ";

/// Copies formatted storage to `to` as node `id`: a fresh directory id and the node id.
fn copy_formatted(from: &Path, to: &Path, id: i32) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != ".lock" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let meta = std::fs::read_to_string(from.join("meta.properties")).unwrap();
    let meta: String = meta
        .lines()
        .map(|line| match line.split_once('=') {
            Some(("node.id", _)) => format!("node.id={id}\n"),
            Some(("directory.id", _)) => format!("directory.id={}\n", directory_id(id)),
            _ => format!("{line}\n"),
        })
        .collect();
    std::fs::write(to.join("meta.properties"), meta).unwrap();
}

/// A directory id per node: base64url of 16 bytes, outside Kafka's reserved ids (which
/// start with 15 zero bytes).
fn directory_id(id: i32) -> String {
    format!("dGZub2Rl{:0>13}A", format!("{id:x}").replace(|c: char| !c.is_ascii_alphanumeric(), ""))
}
