"""Confluent's own Avro serializer and deserializer against trendflow's topics.

`produce`: writes product records as Confluent-framed Avro.

The first half of the records is written with writer schema v1 (every product
field), the second half with v2 (an evolved schema: fields in another order,
`reviews` as an int, the two URL fields dropped, a new `color` field), so the
consumer must decode two registered schemas by id. Then three poison records:
a JSON object (no Avro framing), a framed record with an id the registry never
gave, and a truncated v1 record.

`consume`: reads a whole topic back with Confluent's AvroDeserializer (records
of any registered schema, including the ones trendflow wrote) and writes them as
NDJSON; records it cannot deserialize are counted, not written.

Usage: python produce_avro.py produce BROKERS TOPIC REGISTRY_URL RECORDS.ndjson
       python produce_avro.py consume BROKERS TOPIC REGISTRY_URL OUT.ndjson
"""

import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def nullable(kind: str) -> list:
    return ["null", kind]


def field(name: str, kind) -> dict:
    return {"name": name, "type": kind, "default": None} if isinstance(kind, list) else {"name": name, "type": kind}


V1 = {
    "type": "record",
    "name": "Product",
    "namespace": "trendflow.test",
    "fields": [
        field("asin", "string"),
        field("title", nullable("string")),
        field("imgUrl", nullable("string")),
        field("productURL", nullable("string")),
        field("stars", nullable("double")),
        field("reviews", nullable("long")),
        field("price", nullable("double")),
        field("listPrice", nullable("double")),
        field("category_id", nullable("int")),
        field("isBestSeller", nullable("boolean")),
        field("boughtInLastMonth", nullable("long")),
    ],
}
V2 = {
    "type": "record",
    "name": "Product",
    "namespace": "trendflow.test",
    "fields": [
        field("price", nullable("double")),
        field("asin", "string"),
        field("category_id", nullable("int")),
        field("title", nullable("string")),
        field("stars", nullable("double")),
        field("reviews", nullable("int")),
        field("listPrice", nullable("double")),
        field("isBestSeller", nullable("boolean")),
        field("boughtInLastMonth", nullable("long")),
        field("color", nullable("string")),
    ],
}


def produce(brokers: str, topic: str, registry_url: str, path: str) -> None:
    registry = SchemaRegistryClient({"url": registry_url})
    serializers = [AvroSerializer(registry, json.dumps(schema)) for schema in (V1, V2)]
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    records = [json.loads(line) for line in open(path) if line.strip()]
    context = SerializationContext(topic, MessageField.VALUE)
    encoded = []
    for i, record in enumerate(records):
        second_half = i >= len(records) // 2
        if second_half:
            record = {k: v for k, v in record.items() if k not in ("imgUrl", "productURL")} | {"color": "red"}
        value = serializers[second_half](record, context)
        encoded.append(value)
        producer.produce(topic, key=record["asin"].encode(), value=value)
        producer.poll(0)
    poison = [b'{"asin": "JSON0001"}', b"\x00\x00\x00\x10\x92" + encoded[0][5:], encoded[0][:-4]]
    for value in poison:
        producer.produce(topic, value=value)
    left = producer.flush(60)
    if left:
        sys.exit(f"{left} records not acknowledged")
    print(f"produced {len(records)} Avro records and {len(poison)} poison records", flush=True)


def consume(brokers: str, topic: str, registry_url: str, path: str) -> None:
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "avro-check", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    context = SerializationContext(topic, MessageField.VALUE)
    read, failed = {p: 0 for p in partitions}, 0
    with open(path, "w") as out:
        while any(read[p] < ends[p] for p in partitions):
            message = consumer.poll(10)
            if message is None:
                sys.exit(f"no record within 10 s; read {read} of {ends}")
            if message.error():
                sys.exit(str(message.error()))
            read[message.partition()] = message.offset() + 1
            try:
                record = deserializer(message.value(), context)
            except Exception:
                failed += 1
                continue
            out.write(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")
    print(f"deserialized {sum(read.values()) - failed} records, {failed} failed", flush=True)


if __name__ == "__main__":
    {"produce": produce, "consume": consume}[sys.argv[1]](*sys.argv[2:6])
