package Ahava::Test;

# The Ahava test harness, in the Test::Nginx tradition: each t/*.t file
# brings its http{}-level nginx config inline, and this module gives it
# PostgreSQL + Redis, a fresh seeded database, secrets, a running nginx with
# the module, JWTs minted independently of the code under test (Crypt::JWT),
# an HTTP client, SQL access and error-log checks.  See t/README.md.

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(hmac_sha256 hmac_sha512);
use Encode ();
use Exporter 'import';
use File::Basename qw(basename);
use File::Temp qw(tempfile);
use JSON::PP ();
use MIME::Base64 qw(encode_base64 encode_base64url);
use POSIX ();
use Test::More ();
use Time::HiRes qw(time);

use Ahava::Test::Util qw(free_port poll_until run_capture slurp spew
                         repo_root process_alive);
use Ahava::Test::Postgres;
use Ahava::Test::Redis;
use Ahava::Test::Nginx;
use Ahava::Test::HTTP;

our @EXPORT = qw(
    setup start_nginx nginx request response token raw_jwt b64url
    psql psql_value lock_table pg_lock_waiters
    reset_statements statement_calls
    error_log_like error_log_unlike check_error_log
    api_ok api_error_is poll_until done_ahava
    node_encrypt env_value %ID visit_id message_id
    repo_root free_port run_capture
);

our %ID = (
    patient1 => 'cdemopatient0000000000001',
    patient2 => 'cdemopatient0000000000002',
    nurse1   => 'cdemonurse000000000000001',
    nurse2   => 'cdemonurse000000000000002',
    doctor   => 'cdemodoctor00000000000001',
    admin    => 'cdemoadmin000000000000001',
    (map { ("visit$_"   => sprintf('cdemovisit%015d', $_)) } 1 .. 5),
    (map { ("message$_" => sprintf('cdemomessage%013d', $_)) } 1 .. 6),
);

sub visit_id   { sprintf('cdemovisit%015d', $_[0]) }
sub message_id { sprintf('cdemomessage%013d', $_[0]) }

my $JSON = JSON::PP->new->utf8->canonical;
my $MAIN_PID = $$;
my $TOP = repo_root();

# the state of this test file
our %ENVV;           # DATABASE_URL REDIS_URL JWT_SECRET ENCRYPTION_KEY
our ($PG, $REDIS);   # private instances (objects) or undef
our ($ADMIN_URL, $DB_NAME);
our @NGINX;          # every instance started
our $DEFAULT_NGINX;
our @LOCKS;
my $RSA;
my $cleaned;

$SIG{INT} = $SIG{TERM} = sub { exit 130 };

sub _random_b64 {
    my ($n) = @_;
    open(my $fh, '<:raw', '/dev/urandom') or die "/dev/urandom: $!";
    read($fh, my $buf, $n) == $n or die "short read from /dev/urandom";
    close $fh;
    return encode_base64($buf, '');
}

# setup(private_pg => 1, private_redis => 1, redis_appendonly => 1, db => 0,
#       services => 0)
#
# services => 0: only secrets and URLs (of nothing), for nginx -t.
# PostgreSQL and Redis come from AHAVA_TEST_PG_URL / AHAVA_TEST_REDIS_URL
# when set and the file does not ask for private ones; otherwise this file
# starts its own on free ports.  Then a fresh database, migrated and seeded.
sub setup {
    my (%o) = @_;

    $ENVV{JWT_SECRET}     = $o{jwt_secret} // _random_b64(32);
    $ENVV{ENCRYPTION_KEY} = $o{encryption_key} // _random_b64(32);

    if (defined $o{services} && !$o{services}) {
        $ENVV{DATABASE_URL} = 'postgresql://postgres@127.0.0.1:9/ahava_unused';
        $ENVV{REDIS_URL} = 'redis://127.0.0.1:9/0';
        return \%ENVV;
    }

    if ($ENV{AHAVA_TEST_REDIS_URL} && !$o{private_redis}) {
        $ENVV{REDIS_URL} = $ENV{AHAVA_TEST_REDIS_URL};
    } else {
        $REDIS = Ahava::Test::Redis->start(appendonly => $o{redis_appendonly});
        $ENVV{REDIS_URL} = $REDIS->url;
    }

    if ($ENV{AHAVA_TEST_PG_URL} && !$o{private_pg} && !$o{pg_ssl}) {
        $ADMIN_URL = $ENV{AHAVA_TEST_PG_URL};
    } else {
        $PG = Ahava::Test::Postgres->start(ssl => $o{pg_ssl});
        $ADMIN_URL = $PG->url('postgres');
    }

    # "ahava_t" + the file's number + 13 hex: always 24 characters.  BUG
    # (see t/010-config.t): the module's conninfo parsing blanks the host
    # when the database name has 8k+3 characters, so the length is fixed.
    my ($num) = basename($0) =~ /^(\d{3})/;
    $DB_NAME = sprintf('ahava_t%s_%05x%08x', $num // 'xxx', $$ & 0xfffff,
                       int rand 2**32);
    $ENVV{DATABASE_URL} = _db_url($ADMIN_URL, $DB_NAME);

    return \%ENVV if defined $o{db} && !$o{db};

    _psql_raw($ADMIN_URL, qq{CREATE DATABASE "$DB_NAME"});
    $ENVV{_db_created} = 1;

    my ($rc, $out) = run_capture(["$TOP/bin/ahava-migrate", $ENVV{DATABASE_URL}]);
    die "ahava-migrate failed ($rc):\n$out" if $rc;
    ($rc, $out) = run_capture(["$TOP/bin/ahava-seed", $ENVV{DATABASE_URL}],
                              env => { ENCRYPTION_KEY => $ENVV{ENCRYPTION_KEY} });
    die "ahava-seed failed ($rc):\n$out" if $rc;

    # statement counts, where the server preloads the extension
    if (psql_value(q{SELECT count(*) FROM pg_available_extensions
                     WHERE name = 'pg_stat_statements'})
        && (psql_value('SHOW shared_preload_libraries') // '')
           =~ /pg_stat_statements/)
    {
        psql('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
        $ENVV{_statements} = 1;
    }

    return \%ENVV;
}

sub _db_url {
    my ($admin, $db) = @_;
    my ($base, $query) = $admin =~ m{^(postgres(?:ql)?://[^/?]*)(?:/[^?]*)?(\?.*)?$}
        or croak "cannot parse PostgreSQL URL '$admin'";
    return "$base/$db" . ($query // '');
}

sub env_value { $ENVV{ $_[0] } }
sub pg        { $PG }
sub redis     { $REDIS }

# start_nginx($http_config, name => 'main', workers => 1, env => {...},
#             vars => {...}, log_level => 'info', default => 1)
sub start_nginx {
    my ($config, %o) = @_;
    my %env = map { $_ => $ENVV{$_} } grep { !/^_/ } keys %ENVV;
    %env = (%env, %{ $o{env} || {} });
    my $n = Ahava::Test::Nginx->new(%o, config => $config, env => \%env);
    push @NGINX, $n;
    $n->start;
    $DEFAULT_NGINX = $n if !$DEFAULT_NGINX || $o{default};
    return $n;
}

# an nginx object that is not started (for nginx -t)
sub nginx {
    my ($config, %o) = @_;
    my %env = map { $_ => $ENVV{$_} } grep { !/^_/ } keys %ENVV;
    %env = (%env, %{ $o{env} || {} });
    return Ahava::Test::Nginx->new(%o, config => $config, env => \%env);
}

# request($method, $path, as => 'admin' | token => $jwt | headers => {...},
#         body => $bytes, nginx => $n, port => $p, timeout => 10)
# Scalar context: an Ahava::Test::Response.  List context: (status, headers,
# decoded JSON or raw body).
sub request {
    my ($method, $path, %o) = @_;
    my $port = $o{port} || ($o{nginx} || $DEFAULT_NGINX
                            || croak "no nginx started")->port;
    my $headers = $o{headers} || {};
    if (ref $headers eq 'HASH') {
        $headers = { %$headers };
        if (defined $o{as}) {
            my $uid = exists $ID{ $o{as} } ? $ID{ $o{as} } : $o{as};
            $headers->{Authorization} = 'Bearer ' . token($uid);
        } elsif (defined $o{token}) {
            $headers->{Authorization} = "Bearer $o{token}";
        }
    }
    my $res = Ahava::Test::HTTP::request($port, $method, $path, %o,
                                         headers => $headers);
    return wantarray ? ($res->status, $res->headers, $res->body) : $res;
}

# request() that always returns the Response object (also in list context,
# e.g. as a function argument)
sub response {
    my $res = request(@_);
    return $res;
}

sub b64url { encode_base64url($_[0]) }

# token($userId, alg => 'HS256'|'HS512'|'RS256'|'none', exp => +secs,
#       nbf => +secs, omit => ['exp', ...], claims => {...}, secret => $s,
#       header => {...})
sub token {
    my ($user, %o) = @_;
    require Crypt::JWT;
    my $alg = $o{alg} // 'HS256';
    my $now = time;
    my %p = (userId => $user, iat => int($now),
             exp => int($now) + ($o{exp} // 3600));
    $p{nbf} = int($now) + $o{nbf} if defined $o{nbf};
    delete @p{ @{ $o{omit} || [] } };
    %p = (%p, %{ $o{claims} || {} });

    if ($alg eq 'none') {
        return b64url($JSON->encode({ alg => 'none', typ => 'JWT',
                                      %{ $o{header} || {} } }))
               . '.' . b64url($JSON->encode(\%p)) . '.';
    }

    my $key;
    if ($alg =~ /^HS/) {
        $key = $o{secret} // $ENVV{JWT_SECRET};
    } else {
        require Crypt::PK::RSA;
        $RSA ||= do { my $k = Crypt::PK::RSA->new; $k->generate_key(256); $k };
        $key = $o{key} || $RSA;
    }
    return Crypt::JWT::encode_jwt(payload => \%p, alg => $alg, key => $key,
                                  extra_headers => $o{header} || {});
}

# A token from raw header and payload text (need not be JSON), signed with
# HS256 over exactly those bytes unless signature => '...' is given.
sub raw_jwt {
    my ($header, $payload, %o) = @_;
    my $input = b64url($header) . '.' . b64url($payload);
    my $sig = exists $o{signature} ? $o{signature}
            : b64url(hmac_sha256($input, $o{secret} // $ENVV{JWT_SECRET}));
    return "$input.$sig";
}

# --- SQL -----------------------------------------------------------------

sub _psql_raw {
    my ($url, $sql) = @_;
    my ($fh, $file) = tempfile('ahava-sql-XXXXXX', TMPDIR => 1, UNLINK => 1);
    binmode $fh, ':raw';
    print {$fh} $sql;
    close $fh;
    my ($rc, $out) = run_capture(['psql', '-X', '-q', '-A', '-t',
        '-v', 'ON_ERROR_STOP=1', '-F', "\x1f", '-R', "\x1e",
        '-P', 'null=\\N', '-d', $url, '-f', $file]);
    unlink $file;
    croak "psql failed ($rc): $out\nSQL: $sql" if $rc;
    return $out;
}

# Rows of the (last) statement's result as array refs; NULL is undef; text
# decoded from UTF-8 (raw => 1: bytes).  The SQL is sent as given (bytes:
# encode wide characters yourself).
sub psql {
    my ($sql, %o) = @_;
    my $out = _psql_raw($o{url} || $ENVV{DATABASE_URL}, $sql);
    $out = Encode::decode('UTF-8', $out) unless $o{raw};
    $out =~ s/\n\z//;
    return [] if $out eq '';
    return [ map { [ map { $_ eq '\\N' ? undef : $_ } split /\x1f/, $_, -1 ] }
             split /\x1e/, $out, -1 ];
}

sub psql_value {
    my ($sql, %o) = @_;
    my $rows = psql($sql, %o);
    return @$rows ? $rows->[0][0] : undef;
}

# Holds "BEGIN; LOCK TABLE $table IN ACCESS EXCLUSIVE MODE;" in a separate
# psql session until $lock->release (COMMIT).  Returns once the lock is
# granted (checked in pg_locks).
sub lock_table {
    my ($table, %o) = @_;
    my $lock = Ahava::Test::Lock->new($ENVV{DATABASE_URL}, $table,
                                      $o{mode} || 'ACCESS EXCLUSIVE');
    push @LOCKS, $lock;
    return $lock;
}

# How many of nginx's PostgreSQL sessions (application_name ahava-nginx)
# are waiting for a lock in the test database.
sub pg_lock_waiters {
    return psql_value(q{SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'ahava-nginx'
          AND wait_event_type = 'Lock'});
}

# Statement counts of this database (pg_stat_statements): reset, then the
# calls of every statement since, but the ones that look at the counts.
# undef when the server does not preload the extension.
sub reset_statements {
    return undef unless $ENVV{_statements};
    psql('SELECT pg_stat_statements_reset()');
    return 1;
}

# statement_calls(like => '%UPDATE%', except => 'audit_logs'): sum of calls
# (of matching texts, without the ones naming except).  The outbox relay's
# own statements (reading and deleting ahava_outbox, every second on each
# worker) and the check of the migrations at start are never counted: they
# belong to no request.
sub statement_calls {
    my (%o) = @_;
    return undef unless $ENVV{_statements};
    my $like = defined $o{like} ? " AND query ILIKE '$o{like}'" : '';
    $like .= " AND query NOT ILIKE '%$o{except}%'" if defined $o{except};
    return psql_value(qq{SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database
                      WHERE datname = current_database())
          AND query NOT ILIKE '%pg_stat_statements%'
          AND query NOT ILIKE '%FROM ahava_outbox%'
          AND query NOT ILIKE '%_ahava_migrations%'$like});
}

# --- assertions ----------------------------------------------------------

sub _tb { Test::More->builder }

# 200 (or $o{status}) and {"success":true,...}
sub api_ok {
    my ($res, $name, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $want = $o{status} || 200;
    my $j = $res->json;
    my $ok = $res->status == $want && $res->is_json
             && ref $j eq 'HASH' && $j->{success} && JSON::PP::is_bool($j->{success});
    _tb->ok($ok, $name) or _tb->diag("expected $want success JSON, got:\n" . $res->dump);
    return $ok;
}

# status + {"success":false,"error":"<non-empty>","code":$code} as JSON
sub api_error_is {
    my ($res, $status, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $j = $res->json;
    my @why;
    push @why, "status " . $res->status . " != $status" if $res->status != $status;
    push @why, "content-type '" . $res->content_type . "' is not application/json"
        unless $res->is_json;
    if (ref $j ne 'HASH') {
        push @why, 'body is not a JSON object';
    } else {
        push @why, 'success is not false'
            unless exists $j->{success} && JSON::PP::is_bool($j->{success}) && !$j->{success};
        push @why, "code '" . ($j->{code} // 'undef') . "' != '$code'"
            unless ($j->{code} // '') eq $code;
        push @why, 'no error message'
            unless defined $j->{error} && !ref $j->{error} && length $j->{error};
    }
    push @why, 'HTML in the body' if $res->raw =~ /<html/i;
    my $ok = !@why;
    _tb->ok($ok, $name) or _tb->diag(join('; ', @why) . "\n" . $res->dump);
    return $ok;
}

sub _nginx_of { $_[0] || $DEFAULT_NGINX || croak "no nginx" }

# error_log_like(qr/.../, $name, nginx => $n, timeout => 2): polls the log
# (lines can be written just after the response) up to timeout seconds.
sub error_log_like {
    my ($re, $name, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $n = _nginx_of($o{nginx});
    my $ok = poll_until($o{timeout} // 2, sub { $n->error_log =~ $re });
    _tb->ok($ok, $name // "error log matches $re")
        or _tb->diag("error log of '$n->{name}' does not match $re:\n" . _tail($n->error_log));
    return $ok;
}

sub error_log_unlike {
    my ($re, $name, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $n = _nginx_of($o{nginx});
    my @hits = grep { $_ =~ $re } split /\n/, $n->error_log;
    my $ok = !@hits;
    _tb->ok($ok, $name // "error log does not match $re")
        or _tb->diag("matching lines:\n" . join("\n", @hits[0 .. ($#hits > 9 ? 9 : $#hits)]));
    return $ok;
}

sub _tail {
    my @l = split /\n/, $_[0];
    @l = @l[-25 .. -1] if @l > 25;
    return join("\n", @l);
}

# After a stop: nothing alarming in the instance's error log.
# todo => { alert|sanitizer|socket|crash => 'BUG: ...' } marks single checks
# TODO (a known module bug that shows there).
our %LOG_CHECKS = (
    alert     => ['no [alert], [crit] or [emerg]', qr/\[(?:alert|crit|emerg)\]/],
    sanitizer => ['no sanitizer report', qr/AddressSanitizer|LeakSanitizer|runtime error:/],
    socket    => ['no socket left open at exit', qr/open socket #\d+ left in connection/],
    crash     => ['no worker crash', qr/exited on signal|segmentation fault/i],
);

sub check_error_log {
    my ($n, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $n = _nginx_of($n);
    my @lines = split /\n/, $n->error_log;
    for my $k (qw(alert sanitizer socket crash)) {
        my ($name, $re) = @{ $LOG_CHECKS{$k} };
        my @allow = @{ $o{allow} || [] };
        my @hits = grep { my $l = $_; $l =~ $re && !grep { $l =~ $_ } @allow } @lines;
        my $todo = $o{todo} && $o{todo}{$k};
        _tb->todo_start($todo) if $todo;
        _tb->ok(!@hits, "nginx '$n->{name}' error log: $name")
            or _tb->diag(join("\n", @hits[0 .. ($#hits > 9 ? 9 : $#hits)]));
        _tb->todo_end if $todo;
    }
}

# Stops every nginx (QUIT, graceful), checks their error logs, releases
# locks, drops the database, stops private services, done_testing.
# log_todo => { crash => 'BUG: ...', ... } marks error-log checks TODO (see
# check_error_log).
sub done_ahava {
    my (%o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $_->release for grep { !$_->{released} } @LOCKS;
    for my $n (@NGINX) {
        next unless $n->{started};
        _tb->ok($n->stop, "nginx '$n->{name}' exited on QUIT");
        check_error_log($n, allow => $n->{allow_log} || [], todo => $o{log_todo});
        $n->{started} = 0;
    }
    cleanup();
    Test::More::done_testing();
}

sub cleanup {
    return if $cleaned++ || $$ != $MAIN_PID;
    for my $l (@LOCKS) { eval { $l->release } }
    for my $n (@NGINX) { eval { $n->stop(timeout => 10) } if $n->{pid} }
    if ($ENVV{_db_created} && $ADMIN_URL && (!$PG || $PG->running)) {
        eval { _psql_raw($ADMIN_URL, qq{DROP DATABASE IF EXISTS "$DB_NAME" WITH (FORCE)}) };
        warn "# dropping $DB_NAME: $@" if $@;
    }
    $PG->destroy if $PG;
    $REDIS->destroy if $REDIS;
}

END {
    local $?;
    cleanup();
}

# --- Node's crypto (the Node app's side of SPEC §10) ---------------------

# node_encrypt(['text', ...], format => 'v2' | 'hex', key => $b64)
sub node_encrypt {
    my ($plains, %o) = @_;
    my $script = <<'_JS_';
const crypto = require('crypto');
let input = '';
process.stdin.on('data', (d) => input += d);
process.stdin.on('end', () => {
    const { key, format, plains } = JSON.parse(input);
    const k = Buffer.from(key, 'base64');
    const out = plains.map((p) => {
        const iv = crypto.randomBytes(12);
        const c = crypto.createCipheriv('aes-256-gcm', k, iv);
        const ct = Buffer.concat([c.update(p, 'utf8'), c.final()]);
        const tag = c.getAuthTag();
        return format === 'hex'
            ? [iv, tag, ct].map((b) => b.toString('hex')).join(':')
            : 'v2:' + [iv, tag, ct].map((b) => b.toString('base64')).join(':');
    });
    process.stdout.write(JSON.stringify(out));
});
_JS_
    my $in = $JSON->encode({ key => $o{key} // $ENVV{ENCRYPTION_KEY},
                             format => $o{format} // 'v2', plains => $plains });
    my ($rc, $out) = run_capture(['node', '-e', $script], stdin => $in);
    croak "node failed ($rc): $out" if $rc;
    return @{ $JSON->decode($out) };
}

package Ahava::Test::Lock;

use strict;
use warnings;
use Carp qw(croak);
use POSIX ();
use Ahava::Test::Util qw(poll_until slurp);

my $seq = 0;

sub new {
    my ($class, $url, $table, $mode) = @_;
    my $app = "ahava-test-lock-$$-" . ++$seq;
    my $errfile = "/tmp/$app.err";
    my $pid = open(my $fh, '|-');
    croak "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', $errfile;
        $ENV{PGAPPNAME} = $app;
        no warnings 'exec';
        exec 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $url;
        POSIX::_exit(127);
    }
    my $old = select $fh; $| = 1; select $old;
    print {$fh} "BEGIN;\nLOCK TABLE $table IN $mode MODE;\n";
    my $self = bless { fh => $fh, pid => $pid, app => $app, errfile => $errfile,
                       table => $table }, $class;
    my $granted = poll_until(10, sub {
        Ahava::Test::psql_value(qq{SELECT count(*) FROM pg_locks l
            JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE a.application_name = '$app' AND l.granted
              AND l.locktype = 'relation' AND l.relation = '"$table"'::regclass})
    });
    unless ($granted) {
        $self->release;
        croak "the lock on $table was not granted: " . (slurp($errfile) // '');
    }
    return $self;
}

sub release {
    my ($self) = @_;
    return if $self->{released}++;
    print { $self->{fh} } "COMMIT;\n";
    close $self->{fh};          # psql reads EOF, exits; close waits for it
    unlink $self->{errfile};
    return 1;
}

sub DESTROY {
    my ($self) = @_;
    $self->release unless $self->{released};
}

1;
