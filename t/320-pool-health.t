# The PostgreSQL pool's health is per connection (issue 7): a connect that
# fails while other connections serve does not make the worker answer 503;
# an outage under load writes a line a second, not one per request; a
# flood of bad tokens neither crowds out API requests nor loses its record;
# a worker that exits with statements in flight runs nothing of theirs.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Time::HiRes qw(time);
use Ahava::Test::Util qw(slurp);

setup(private_pg => 1);

# a role that may hold 2 connections: the third connect is refused
# ("too many connections for role"), as a managed database does
my $url = env_value('DATABASE_URL');
psql(q{DO $$ BEGIN CREATE ROLE ahava_limited LOGIN CONNECTION LIMIT 2;
       EXCEPTION WHEN duplicate_object THEN NULL; END $$});
psql(q{GRANT ALL ON ALL TABLES IN SCHEMA public TO ahava_limited});
(my $limited = $url) =~ s{//postgres\@}{//ahava_limited\@};

my $CONF = <<'_EOC_';
ahava_database          env:AHAVA_TEST_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_pg_pool_size      $TEST_NGINX_POOL;
ahava_pg_wait_queue     16;
ahava_pg_wait_timeout   10s;
ahava_user_cache_ttl    60s;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    error_page 400 401 403 404 405 413 414 429 494 500 501 502 503 504 505
               /_ahava_error;

    location = /health { ahava_health; }
    location /api/visits { ahava_visits; }
    location / { return 404; }
    location = /_ahava_error { internal; ahava_error_page; }
}
_EOC_

my %TOKEN = map { $_ => token($ID{$_}) } qw(admin nurse1 doctor patient1);

sub fire {
    my ($n, @users) = @_;
    return map { my $c = Ahava::Test::HTTP::Conn->open($n->port, GET => '/api/visits',
                     headers => { Authorization => "Bearer $TOKEN{$_}" });
                 $c->{user} = $_; $c } @users;
}

# --- a refused connect while others serve ------------------------------------
{
    my $n = start_nginx($CONF, name => 'limited', workers => 1,
                        vars => { POOL => 4 }, env => { AHAVA_TEST_URL => $limited });
    for my $u (keys %TOKEN) {
        api_ok(response(GET => '/api/visits', token => $TOKEN{$u}, nginx => $n), "warm-up: $u");
    }
    my $lock = lock_table('visits');
    my @c = fire($n, qw(admin nurse1 doctor patient1));
    ok(poll_until(5, sub { pg_lock_waiters() >= 2 }), 'two statements stuck on the two connections allowed');
    error_log_like(qr/too many connections for role/, 'a third connection was refused by PostgreSQL',
                   nginx => $n, timeout => 5);
    Ahava::Test::HTTP::wait_all(\@c, 0.5);
    ok(!(grep { $_->done } @c), 'no request is answered 503 for it: they wait for a connection')
        or diag(join "\n", map { $_->response->dump } grep { $_->done } @c);
    my $h = response(GET => '/health', nginx => $n);
    is($h->status, 200, '/health stays 200: connections are open') or diag($h->dump);
    $lock->release;
    Ahava::Test::HTTP::wait_all(\@c, 15);
    my @bad = grep { $_->response->status != 200 } @c;
    ok(!@bad, 'after the COMMIT all four complete with 200 on the two connections')
        or diag(join "\n", map { $_->response->dump } @bad);
    ok($n->stop, "nginx 'limited' exits");
    check_error_log($n);
}

# --- an outage under load: a line a second, not one per request --------------
{
    my $n = start_nginx($CONF, name => 'outage', workers => 1,
                        vars => { POOL => 4 }, env => { AHAVA_TEST_URL => $url });
    api_ok(response(GET => '/api/visits', token => $TOKEN{admin}, nginx => $n), 'warm-up');
    Ahava::Test::pg()->stop;
    my ($n503, $t0) = (0, time);
    while (time - $t0 < 3) {
        my @c = fire($n, ('admin') x 20);
        Ahava::Test::HTTP::wait_all(\@c, 5);
        $n503 += grep { $_->response->status == 503 } @c;
    }
    cmp_ok($n503, '>=', 100, "$n503 requests answered 503 in 3 s of outage");
    my @lines = grep { /\[(warn|error)\]/ && /postgresql/ } split /\n/, $n->error_log;
    cmp_ok(scalar @lines, '<=', 12, scalar(@lines) . ' warning/error lines about PostgreSQL for '
           . "$n503 refusals (a line a second per kind)") or diag(join "\n", @lines[0 .. 11]);
    like($n->error_log, qr/more like it in the last second/, '... saying how many were left out');
    Ahava::Test::pg()->start;
    ok(poll_until(15, sub { response(GET => '/api/visits', token => $TOKEN{admin}, nginx => $n)->status == 200 }),
       'PostgreSQL back: 200 again without touching nginx');
    ok($n->stop, "nginx 'outage' exits");
    check_error_log($n);
}

# --- a flood of bad tokens ---------------------------------------------------------
{
    my $n = start_nginx($CONF, name => 'flood', workers => 1,
                        vars => { POOL => 2 }, env => { AHAVA_TEST_URL => $url });
    api_ok(response(GET => '/api/visits', token => $TOKEN{admin}, nginx => $n), 'warm-up');
    my $before = psql_value(q{SELECT count(*) FROM audit_logs WHERE action = 'AUTH_FAILED'});
    reset_statements();
    my $bad = token($ID{admin}, secret => 'not-the-secret');
    my ($sent, $ok_during) = (0, 0);
    for (1 .. 25) {
        my @c = map { Ahava::Test::HTTP::Conn->open($n->port, GET => '/api/visits',
                          headers => { Authorization => "Bearer $bad" }) } 1 .. 20;
        my ($good) = fire($n, 'admin');
        Ahava::Test::HTTP::wait_all([@c, $good], 5);
        $sent += grep { $_->response->status == 401 } @c;
        $ok_during++ if $good->response->status == 200;
    }
    is($sent, 500, '500 bad tokens: 500 answers 401');
    is($ok_during, 25, 'a valid request during the flood: 200 every time (never crowded out)');
    my $rows;
    ok(poll_until(10, sub {
        $rows = psql(q{SELECT count(*), coalesce(sum((metadata->>'count')::int), 0)
                       FROM audit_logs WHERE action = 'AUTH_FAILED'})->[0];
        $rows->[1] >= 500 }), 'audit_logs records all 500 failures') or diag("@$rows");
    cmp_ok($rows->[0] - $before, '<=', 25, ($rows->[0] - $before) . ' AUTH_FAILED rows for them (aggregated)');
    is(psql_value(q{SELECT metadata->>'reason' FROM audit_logs WHERE action = 'AUTH_FAILED'
                    ORDER BY "createdAt" DESC LIMIT 1}), 'bad signature', '... with their reason');
    SKIP: {
        my $calls = statement_calls(like => '%audit_logs%');
        skip 'no pg_stat_statements', 1 unless defined $calls;
        cmp_ok($calls, '<=', 25, "$calls INSERTs wrote them, not one per request");
    }
    ok($n->stop, "nginx 'flood' exits");
    check_error_log($n);
}

# --- connections that died while the worker slept -----------------------------
# Sending on a connection whose server went away fails inside the send: the
# request must be answered once (from a new connection, or 503), never from
# inside the call that started it.
{
    my $n = start_nginx($CONF, name => 'dead', workers => 1,
                        vars => { POOL => 2 }, env => { AHAVA_TEST_URL => $url });
    api_ok(response(GET => '/api/visits', token => $TOKEN{$_}, nginx => $n), "warm-up: $_")
        for qw(admin nurse1);
    my ($worker) = grep { (slurp("/proc/$_/stat") // '') =~ /^\d+ \(.*\) \S (\d+)/s && $1 == $n->pid }
                   map { m{/proc/(\d+)/stat} ? $1 : () } glob '/proc/[0-9]*/stat';
    ok($worker, "the worker's pid ($worker)");
    kill 'STOP', $worker;
    # waits for each backend to exit (PostgreSQL 14+): one that exited only
    # after the worker resumed would fail the check after the burst, not this
    psql(q{SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
           WHERE application_name = 'ahava-nginx'});
    is(psql_value(q{SELECT count(*) FROM pg_stat_activity
                    WHERE application_name = 'ahava-nginx'}),
       0, "the worker's PostgreSQL backends exited while it slept");
    my @c = fire($n, qw(admin nurse1 admin));
    kill 'CONT', $worker;
    Ahava::Test::HTTP::wait_all(\@c, 10);
    my @odd = grep { my $s = $_->response->status; !($s == 200 || $s == 503) || !$_->response->is_json } @c;
    ok(!@odd, 'each request is answered once, 200 or 503 JSON: ' . join(' ', map { $_->response->status } @c))
        or diag(join "\n", map { $_->response->dump } @odd);
    # a connection still being opened when its backend was killed counts as a failed connect: the
    # pool then answers 503 for its first backoff (250 ms) before it connects again
    my @next;
    ok(poll_until(5, sub { push @next, response(GET => '/api/visits', token => $TOKEN{admin}, nginx => $n);
                           $next[-1]->status == 200 }),
       'and requests are served again on new connections (200 within 5 s)') or diag($next[-1]->dump);
    ok(!grep({ !($_->status == 200 || ($_->status == 503 && $_->is_json)) } @next),
       '... every answer before it a JSON 503: ' . join(' ', map { $_->status } @next));
    ok($n->stop, "nginx 'dead' exits");
    check_error_log($n);
}

# --- a worker that exits with statements in flight ------------------------------
for my $sig (qw(QUIT TERM)) {
    my $n = start_nginx($CONF, name => "exit-$sig", workers => 1,
                        vars => { POOL => 2 }, env => { AHAVA_TEST_URL => $url },
                        main_config => 'worker_shutdown_timeout 1s;');
    api_ok(response(GET => '/api/visits', token => $TOKEN{$_}, nginx => $n), "$sig: warm-up $_")
        for qw(admin nurse1 doctor);
    my $lock = lock_table('visits');
    my @c = fire($n, qw(admin nurse1 doctor));
    ok(poll_until(5, sub { pg_lock_waiters() >= 2 }), "$sig: statements stuck, one more waiting");
    kill $sig, $n->pid;
    ok(poll_until(15, sub { !$n->running }), "$sig: nginx exits with them in flight");
    $lock->release;
    Ahava::Test::HTTP::wait_all(\@c, 5);
    ok(!(grep { $_->response->status == 200 } @c), "$sig: none of them was answered 200 afterwards");
    $n->{pid} = undef;
    $n->{started} = 0;
    check_error_log($n);
}

done_ahava();
