# Sourced by test.sh and bench.sh: installs what tests and benchmarks need when it is
# missing, and exports where it is. Idempotent; fast when everything is in place.

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi

# A Python venv with the pinned packages of the given requirement files.
ensure_venv() {
    venv="${TRENDFLOW_VENV:-$HOME/.cache/trendflow/venv}"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    local stamp="$venv/.requirements.sha256" want
    want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        local args=()
        for file in "$@"; do args+=(-r "$file"); done
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
        echo "$want" > "$stamp"
    fi
    # The MongoDB tests and benchmarks start SecantusDB with this interpreter.
    export TRENDFLOW_PYTHON="$venv/bin/python"
}

# Debian's Chromium, for the browser test.
ensure_chromium() {
    if [ ! -x /usr/bin/chromium ]; then
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
}

# Copies the artifacts of Maven project POM and their runtime dependencies from Maven
# Central into DIR, unless DIR already holds them for this POM (its hash is the stamp).
# NEEDS is a command besides mvn that must exist (java or javac); WHAT names it all.
maven_copy() {
    local pom="$1" dir="$2" needs="$3" what="$4"
    local stamp="$dir/.pom.sha256" want
    want="$(sha256sum "$pom" | cut -d' ' -f1)"
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return
    if ! command -v mvn >/dev/null 2>&1 || ! command -v "$needs" >/dev/null 2>&1; then
        echo "error: $what needs Maven and $needs 17+ (apt-get install maven openjdk-17-jdk-headless)" >&2
        exit 1
    fi
    echo "installing $what from Maven Central into $dir (first run only)"
    rm -rf "$dir"
    mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir"
    echo "$want" > "$stamp"
}

# Apache Kafka (broker + KRaft controller), pinned in scripts/kafka/pom.xml, in a cache
# outside the clone. The test harness and the benchmarks run `kafka.Kafka` from
# TRENDFLOW_KAFKA_LIBS with Java 17+.
ensure_kafka() {
    TRENDFLOW_KAFKA_LIBS="${TRENDFLOW_KAFKA_LIBS:-$HOME/.cache/trendflow/kafka-4.1.1}"
    maven_copy scripts/kafka/pom.xml "$TRENDFLOW_KAFKA_LIBS" java "Apache Kafka 4.1.1"
    export TRENDFLOW_KAFKA_LIBS
}

# cargo-fuzz (libFuzzer driver) for scripts/fuzz.sh, installed by cargo when missing.
ensure_cargo_fuzz() {
    local version=0.13.1
    if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $version" ]; then
        echo "installing cargo-fuzz $version with cargo (first run only; ~2 min)"
        env -u CARGO_TARGET_DIR cargo install cargo-fuzz --version "$version" --locked --quiet
    fi
}

# FerretDB (the second MongoDB-protocol server of the MongoDB tests; SQLite storage, pure
# Go), pinned, built with Go from the module proxy into a cache outside the clone.
ensure_ferretdb() {
    local version=v1.24.2 cache="$HOME/.cache/trendflow"
    FERRETDB_BIN="$cache/bin/ferretdb"
    if ! "$FERRETDB_BIN" --version 2>/dev/null | grep -qx "version: $version"; then
        echo "installing FerretDB $version with go (first run only; ~3 min on 2 cores)"
        local go
        go="$(command -v go || echo /usr/local/go/bin/go)"
        if [ ! -x "$go" ]; then
            echo "error: FerretDB for the MongoDB tests is built with Go 1.24+, which is not installed" >&2
            exit 1
        fi
        # Module, build and binary caches under ours, so later runs and CI reuse them.
        local -x GOPATH="$cache/go" GOMODCACHE="$cache/go/pkg/mod" GOCACHE="$cache/go/cache" GOTOOLCHAIN=local
        local module src
        module="$(cd / && "$go" mod download -json "github.com/FerretDB/FerretDB@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
        # Not `go install …@version`: the module lacks build/version/version.txt (written from
        # `git describe` in FerretDB's own builds), and a binary built without it panics at
        # start (FerretDB issue 2982). So: build a copy of the module with that file added.
        src="$(mktemp -d)"
        cp -r "$module/." "$src" && chmod -R u+w "$src"
        echo "$version" > "$src/build/version/version.txt"
        (cd "$src" && "$go" build -trimpath -o "$FERRETDB_BIN" ./cmd/ferretdb)
        rm -rf "$src"
    fi
    export FERRETDB_BIN
}

# The Apache Arrow Flight SQL JDBC driver (the one DBeaver uses), pinned in tests/jdbc/pom.xml,
# copied from Maven Central into a cache outside the clone, for tests/python/test_jdbc.py.
# Exports TRENDFLOW_JDBC_CLASSPATH (the jars, as a Java class path); the test compiles its
# client with javac, so it needs a JDK 17+ too.
ensure_jdbc_driver() {
    local dir="${TRENDFLOW_JDBC_DIR:-$HOME/.cache/trendflow/jdbc}"
    maven_copy tests/jdbc/pom.xml "$dir" javac "the Flight SQL JDBC driver"
    TRENDFLOW_JDBC_CLASSPATH="$(find "$dir" -name '*.jar' | sort | paste -sd:)"
    export TRENDFLOW_JDBC_CLASSPATH
}
