# PostgreSQL goes away and comes back under a running nginx (SPEC §4
# SERVICE_UNAVAILABLE; DESIGN: "a PostgreSQL restart heals by itself"):
# quick 503s instead of hangs, /health names postgres, recovery without
# touching nginx, and a query cut off mid-flight.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Time::HiRes qw(time);

setup(private_pg => 1);              # this file stops and restarts PostgreSQL
my $pg = Ahava::Test::pg();

my $n = start_nginx(<<'_EOC_');
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_pg_pool_size      4;
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

my $OK = { status => 'ok', postgres => 'ok', redis => 'ok' };

ok(poll_until(10, sub { response(GET => '/health')->status == 200 }), '/health is 200 at start');
api_ok(response(GET => '/api/visits', as => 'admin'), 'admin: 200 (user now cached)');
api_ok(response(GET => "/api/visits/$ID{visit4}", as => 'nurse1'), 'nurse1 detail: 200 (cached)');

# every API request while PostgreSQL is down: a quick JSON 503
sub all_503 {
    my ($phase) = @_;
    # admin and nurse1 are cached users (the visit query fails); patient1
    # and doctor are not (the user lookup fails: 503, never 401)
    for my $case (['admin', '/api/visits'], ['nurse1', "/api/visits/$ID{visit4}"],
                  ['patient1', '/api/visits'], ['doctor', "/api/visits/$ID{visit1}"])
    {
        my ($who, $path) = @$case;
        my $r = response(GET => $path, as => $who, timeout => 5);
        api_error_is($r, 503, 'SERVICE_UNAVAILABLE', "$phase: GET $path as $who: 503 SERVICE_UNAVAILABLE");
        cmp_ok($r->elapsed, '<', 2, "$phase: ... answered within 2 s")
            or diag(sprintf 'took %.2f s', $r->elapsed);
    }
}

# --- PostgreSQL stops ---------------------------------------------------------------
$pg->stop(mode => 'fast');
all_503('right after the stop');

my $r = poll_until(10, sub { my $r = response(GET => '/health'); $r->status == 503 && $r });
ok($r, '/health turns 503') or diag(response(GET => '/health')->dump);
$r ||= response(GET => '/health');
is($r->json && $r->json->{postgres}, 'down', '/health names postgres as down') or diag($r->dump);
is($r->json && $r->json->{redis}, 'ok', '/health: redis is still ok');
like($r->content_type, qr{^application/json\b}, '/health: JSON');

all_503('while down');
{
    # a burst while down: nothing queues up behind a dead database
    my @c = map { Ahava::Test::HTTP::Conn->open($n->port, GET => '/api/visits',
                      headers => { Authorization => 'Bearer ' . token($ID{admin}) }) } 1 .. 20;
    Ahava::Test::HTTP::wait_all(\@c, 5);
    my @bad = grep { $_->response->status != 503 || $_->elapsed >= 2 } @c;
    ok(!@bad, 'a burst of 20 requests while down: all 503 within 2 s')
        or diag(join "\n", map { $_->response->dump } @bad[0 .. ($#bad > 2 ? 2 : $#bad)]);
}

# --- PostgreSQL is back on the same port ---------------------------------------------
$pg->start;
my $t0 = time;
$r = poll_until(15, sub { my $r = response(GET => '/api/visits', as => 'admin'); $r->status == 200 && $r });
ok($r, 'the API is 200 again within 15 s, without restarting nginx')
    or diag(response(GET => '/api/visits', as => 'admin')->dump);
note(sprintf 'recovered %.1f s after PostgreSQL was back', time - $t0);
is($r && $r->json->{meta}{total}, 5, '... with the data');
api_ok(response(GET => '/api/visits', as => 'patient1'), 'an uncached user: 200 again');
api_ok(response(GET => "/api/visits/$ID{visit4}", as => 'doctor'), 'the detail: 200 again');
$r = poll_until(10, sub { my $r = response(GET => '/health'); $r->status == 200 && $r });
is_deeply($r && $r->json, $OK, '/health is ok again');

# --- a connection killed while its query runs ---------------------------------------------
sub stuck_request {
    my $c = Ahava::Test::HTTP::Conn->open($n->port, GET => '/api/visits',
                headers => { Authorization => 'Bearer ' . token($ID{admin}) });
    ok(poll_until(5, sub { Ahava::Test::HTTP::wait_all([$c], 0.05); pg_lock_waiters() >= 1 }),
       'a request is waiting on the locked table');
    return $c;
}
{
    my $lock = lock_table('visits');
    my $c = stuck_request();
    my $killed = time;
    is(psql_value(q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'ahava-nginx'
          AND wait_event_type = 'Lock'}), 1, 'its PostgreSQL backend is terminated');
    Ahava::Test::HTTP::wait_all([$c], 5);
    api_error_is($c->response, 503, 'SERVICE_UNAVAILABLE', 'the request of the killed connection: 503');
    cmp_ok(time - $killed, '<', 2, '... within 2 s');
    $lock->release;
    api_ok(response(GET => '/api/visits', as => 'admin'), 'the next request: 200 (the connection was replaced)');
}

# --- PostgreSQL stops while a query is running -----------------------------------------------
{
    my $lock = lock_table('visits');
    my $c = stuck_request();
    my $stopped = time;
    # the shutdown ends the locking session too: the query may still win the
    # lock and finish first (200), or be cut off (503); never a 500, never a hang
    $pg->stop(mode => 'fast');
    $lock->release;
    Ahava::Test::HTTP::wait_all([$c], 5);
    my $res = $c->response;
    ok($res->status == 503 || $res->status == 200,
       'the query running at the shutdown: 503 (or 200 if it finished first)') or diag($res->dump);
    SKIP: {     # the same number of tests whichever won
        skip 'the query finished first (200): no 503 to check', 1 if $res->status == 200;
        api_error_is($res, 503, 'SERVICE_UNAVAILABLE', '... a 503 is the JSON SERVICE_UNAVAILABLE');
    }
    cmp_ok(time - $stopped, '<', 3, '... answered within 3 s of the shutdown');

    $pg->start;
    my $r = poll_until(15, sub { my $r = response(GET => '/api/visits', as => 'admin'); $r->status == 200 && $r });
    ok($r, 'and the API recovers again');
}

done_ahava();
