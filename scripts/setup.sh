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

# The tansu Kafka-protocol broker, pinned, installed with cargo into ~/.cargo/bin.
ensure_tansu() {
    local version=0.6.0
    TANSU_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    if [ "$("$TANSU_BIN" --version 2>/dev/null)" != "tansu $version" ]; then
        echo "installing tansu $version with cargo (first run only; ~15 min on 2 cores)"
        # Its own build dir: the broker's dependencies stay out of trendflow's target dir.
        env -u CARGO_TARGET_DIR cargo install tansu --version "$version" --locked --features libsql --quiet
    fi
    export TANSU_BIN
}

# cargo-fuzz (libFuzzer driver) for scripts/fuzz.sh, installed by cargo when missing.
ensure_cargo_fuzz() {
    local version=0.13.1
    if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $version" ]; then
        echo "installing cargo-fuzz $version with cargo (first run only; ~2 min)"
        env -u CARGO_TARGET_DIR cargo install cargo-fuzz --version "$version" --locked --quiet
    fi
}

# The Apache Arrow Flight SQL JDBC driver (the one DBeaver uses), pinned in tests/jdbc/pom.xml,
# copied from Maven Central into a cache outside the clone, for tests/python/test_jdbc.py.
# Exports TRENDFLOW_JDBC_CLASSPATH (the jars, as a Java class path); the test compiles its
# client with javac, so it needs a JDK 17+ too.
ensure_jdbc_driver() {
    local dir="${TRENDFLOW_JDBC_DIR:-$HOME/.cache/trendflow/jdbc}"
    local stamp="$dir/.pom.sha256" want
    want="$(sha256sum tests/jdbc/pom.xml | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        if ! command -v mvn >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then
            echo "error: the JDBC driver test needs Maven and a JDK 17+ (apt-get install maven openjdk-17-jdk-headless)" >&2
            exit 1
        fi
        echo "installing the Flight SQL JDBC driver from Maven Central into $dir (first run only)"
        rm -rf "$dir"
        mvn -q -B -Dstyle.color=never -f tests/jdbc/pom.xml dependency:copy-dependencies -DoutputDirectory="$dir"
        echo "$want" > "$stamp"
    fi
    TRENDFLOW_JDBC_CLASSPATH="$(find "$dir" -name '*.jar' | sort | paste -sd:)"
    export TRENDFLOW_JDBC_CLASSPATH
}
