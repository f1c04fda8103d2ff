# The per-worker PostgreSQL pool under pressure (DESIGN "The request path":
# bounded pool, bounded wait queue with a timeout, overload -> 503 never a
# stall; no blocking of the worker; client aborts neither crash nor leak).
# A table lock held from another session makes queries hang on demand.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Time::HiRes qw(time);

setup();

my $CONF = <<'_EOC_';
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_pg_pool_size      $TEST_NGINX_POOL;
ahava_pg_wait_queue     $TEST_NGINX_QUEUE;
ahava_pg_wait_timeout   $TEST_NGINX_WAIT;
ahava_user_cache_ttl    60s;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    client_max_body_size  64k;
    error_page 400 401 403 404 405 413 414 429 500 502 503 504 @ahava_error;

    location = /health { ahava_health; }
    location /api/visits { ahava_visits; }
    location / { return 404; }
    location @ahava_error { ahava_error_page; }
}
_EOC_

# one worker: the pool, the queue and /health all live in the same process
my $n = start_nginx($CONF, workers => 1,
                    vars => { POOL => 2, QUEUE => 2, WAIT => '10s' });

my @USERS = qw(admin patient1 patient2 nurse1 nurse2 doctor);
my %TOKEN = map { $_ => token($ID{$_}) } @USERS;
my %TOTAL = (admin => 5, patient1 => 3, patient2 => 2, nurse1 => 3, nurse2 => 2, doctor => 4);

# warm the user cache: afterwards a request needs exactly one connection
for my $u (@USERS) {
    api_ok(response(GET => '/api/visits', token => $TOKEN{$u}, nginx => $n), "warm-up: $u");
}

sub fire {
    my ($nginx, @users) = @_;
    return map { my $c = Ahava::Test::HTTP::Conn->open($nginx->port, GET => '/api/visits',
                     headers => { Authorization => "Bearer $TOKEN{$_}" });
                 $c->{user} = $_; $c } @users;
}
sub stuck_is {
    my ($want, $name) = @_;
    my $got = poll_until(5, sub { my $w = pg_lock_waiters(); $w == $want ? "$w" : 0 });
    ok($got, $name) or diag('waiting on the lock: ' . pg_lock_waiters());
}

# --- (a) pool + queue full: the rest is refused at once ---------------------------
my $lock = lock_table('visits');
my @c = fire($n, @USERS);                                # 6 requests
stuck_is(2, '(a) exactly 2 queries are stuck on the 2 pooled connections');
Ahava::Test::HTTP::wait_all(\@c, 1);
my @refused = grep { $_->done } @c;
my @pending = grep { !$_->done } @c;
is(scalar @refused, 2, '(a) 2 of 6 were answered at once (2 running + 2 queued)');
is(scalar @pending, 4, '(a) 4 are pending (2 on connections, 2 in the queue)');
for my $c (@refused) {
    my $r = $c->response;
    api_error_is($r, 503, 'SERVICE_UNAVAILABLE', "(a) refused request ($c->{user}): 503 SERVICE_UNAVAILABLE");
    cmp_ok($r->elapsed, '<', 1, '(a) ... in under 1 s') or diag(sprintf '%.3f s', $r->elapsed);
}
{
    my $r = response(GET => '/api/visits', token => $TOKEN{admin}, nginx => $n, timeout => 3);
    api_error_is($r, 503, 'SERVICE_UNAVAILABLE', '(a) one more while saturated: 503 at once');
    cmp_ok($r->elapsed, '<', 1, '(a) ... in under 1 s');
}

# --- (b) the worker is not blocked: /health answers while the pool is stuck ------------
{
    my $r = response(GET => '/health', nginx => $n, timeout => 3);
    is($r->status, 200, '(b) GET /health on the same worker while pool and queue are full: 200')
        or diag($r->dump);
    cmp_ok($r->elapsed, '<', 0.5, '(b) ... within 0.5 s') or diag(sprintf '%.3f s', $r->elapsed);
    is_deeply($r->json, { status => 'ok', postgres => 'ok', redis => 'ok' }, '(b) ... and healthy');
}
my $released = time;
$lock->release;
Ahava::Test::HTTP::wait_all(\@pending, 10);
for my $c (@pending) {
    my $r = $c->response;
    api_ok($r, "(b) after COMMIT the held request of $c->{user} completes: 200");
    is($r->json && $r->json->{meta}{total}, $TOTAL{ $c->{user} }, "(b) ... with $c->{user}'s visits");
}
cmp_ok(time - $released, '<', 3, '(b) all of them within 3 s of the COMMIT');

# --- (c) clients that go away while their queries hang -----------------------------------
$lock = lock_table('visits');
@c = fire($n, qw(admin nurse1 doctor patient1));           # 2 running + 2 queued
stuck_is(2, '(c) 2 queries stuck again');
{
    my $r = response(GET => '/api/visits', token => $TOKEN{admin}, nginx => $n, timeout => 3);
    is($r->status, 503, '(c) the queue is full (a 5th request: 503)');
}
$_->abort for @c;                                         # the clients leave
ok(poll_until(5, sub { (() = $n->access_log =~ /" 499 /g) >= 4 }),
   '(c) nginx notices the 4 aborted clients (499 in the access log)')
    or diag($n->access_log);
{
    # the queue slots of the aborted waiters are free again
    my ($w) = fire($n, 'nurse2');
    Ahava::Test::HTTP::wait_all([$w], 0.5);
    ok(!$w->done, '(c) a new request waits in the freed queue instead of a 503')
        or diag($w->response->dump);
    $lock->release;
    Ahava::Test::HTTP::wait_all([$w], 10);
    api_ok($w->response, '(c) ... and completes after the COMMIT');
}
{
    # both connections came back to the pool, healthy: as many concurrent
    # requests as pool + queue hold all succeed (once the detached query of
    # an aborted client has drained: it ran on after the COMMIT)
    ok(poll_until(5, sub { psql_value(q{SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'ahava-nginx'
            AND state = 'idle'}) == 2 }), '(c) both connections idle again');
    my @again = fire($n, qw(admin patient1 patient2 nurse1));
    Ahava::Test::HTTP::wait_all(\@again, 10);
    my @bad = grep { $_->response->status != 200 } @again;
    ok(!@bad, '(c) afterwards 4 concurrent requests (pool 2 + queue 2) all succeed')
        or diag(join "\n", map { $_->response->dump } @bad);
    for my $u (qw(admin doctor)) {
        api_ok(response(GET => '/api/visits', token => $TOKEN{$u}, nginx => $n), "(c) then $u: 200");
    }
    my $conns = psql_value(q{SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'ahava-nginx'});
    cmp_ok($conns, '<=', 2, "(c) nginx holds at most the pool's 2 connections ($conns)");
}

# --- (d) the wait timeout -------------------------------------------------------------------
my $t = start_nginx($CONF, name => 'timeout', workers => 1,
                    vars => { POOL => 1, QUEUE => 4, WAIT => '1s' });
for my $u (qw(admin nurse1 doctor)) {
    api_ok(response(GET => '/api/visits', token => $TOKEN{$u}, nginx => $t), "(d) warm-up: $u");
}
$lock = lock_table('visits');
my ($held, @waiters) = fire($t, qw(admin nurse1 doctor));
ok(poll_until(5, sub { pg_lock_waiters() >= 1 }), '(d) one query stuck on the only connection');
Ahava::Test::HTTP::wait_all(\@waiters, 5);
for my $w (@waiters) {
    my $r = $w->response;
    api_error_is($r, 503, 'SERVICE_UNAVAILABLE', "(d) a waiter ($w->{user}): 503 after the wait timeout");
    ok($r->elapsed >= 0.9 && $r->elapsed < 2.5, sprintf('(d) ... after about 1 s (%.2f s)', $r->elapsed));
}
ok(!$held->done, '(d) the running query is still waiting for the lock');
$lock->release;
Ahava::Test::HTTP::wait_all([$held], 10);
api_ok($held->response, '(d) after COMMIT the running one completes: 200');
api_ok(response(GET => '/api/visits', token => $TOKEN{doctor}, nginx => $t), '(d) and the pool serves again');

done_ahava();
