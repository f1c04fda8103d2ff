# Shared by bin/ahava, bench/run and the CI: packages, build, and the
# embedded PostgreSQL and Redis.  Source it; it defines functions only.

TOP=${TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PGBIN=/usr/lib/postgresql/15/bin

PACKAGES=(
    build-essential nginx nginx-dev libpcre2-dev zlib1g-dev libssl-dev
    libpq-dev libhiredis-dev libjansson-dev libjwt-dev
    postgresql postgresql-client redis-server redis-tools nodejs
    libcrypt-jwt-perl libjson-pp-perl libtest-base-perl
    libprotocol-websocket-perl libhttp-tiny-perl
    imagemagick ghostscript zip libreoffice-writer-nogui chromium
    libcurl4-openssl-dev libcairo2-dev libpango1.0-dev fonts-dejavu-core
    poppler-utils python3-aiosmtpd openssl curl prometheus
    debhelper lintian
)

log() { printf '\033[1mahava:\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install_deps() {
    local missing=()
    local p
    for p in "${PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    log "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    # Debian starts the packaged services; ours run on their own ports and
    # data, so the system ones are left alone.
}

build() {
    log "building the nginx module and ahava-worker"
    make -s -C "$TOP" all >/dev/null
    make -s -C "$TOP/worker" all >/dev/null
    make -s -C "$TOP/t/unit" all >/dev/null
}

# PostgreSQL refuses to run as root: as root it runs as "postgres".
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {   # dir port
    local dir port=$2
    mkdir -p "$1"
    dir=$(cd "$1" && pwd)
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    if [ ! -s "$dir/data/PG_VERSION" ]; then
        log "initialising PostgreSQL in $dir/data"
        as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
            --no-sync >/dev/null
    fi
    if as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        log "PostgreSQL already running in $dir/data"
        return 0
    fi
    rm -f "$dir/data/postmaster.pid"
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
        || { tail -20 "$dir/postgres.log" >&2; die "PostgreSQL did not start"; }
}

stop_postgres() {   # dir
    as_pg "$PGBIN/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}

start_redis() {   # dir port
    local dir=$1 port=$2
    mkdir -p "$dir"
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        log "Redis already running on port $port"
        return 0
    fi
    # BullMQ's queues live here: an append-only file synced before Redis
    # answers, so a crash loses no job it accepted (SPEC §1)
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
        --appendonly yes --appendfsync always --daemonize yes \
        --maxmemory-policy noeviction --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log"
    local i
    for i in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "Redis did not start"
}

stop_redis() {   # port
    redis-cli -p "$1" shutdown >/dev/null 2>&1 || true
}

# The test suite's Node packages (t/package.json: `ws` for the WebSocket
# tests), installed exactly as locked, again whenever the lockfile changed.
install_node_deps() {
    local t="$TOP/t"
    if [ -f "$t/node_modules/.package-lock.json" ] \
       && [ ! "$t/package-lock.json" -nt "$t/node_modules/.package-lock.json" ]; then
        return 0
    fi
    command -v npm >/dev/null || die "npm is missing (Debian package npm, or nodejs from NodeSource)"
    log "installing the test suite's Node packages (npm ci in t/)"
    local out
    out=$(cd "$t" && npm ci --no-audit --no-fund --loglevel=error 2>&1) \
        || { printf '%s\n' "$out" >&2; die "npm ci failed in $t"; }
}
