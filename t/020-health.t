# GET /health (SPEC §1): 200 {"status":"ok","postgres":"ok","redis":"ok"};
# 503 naming the failing part when Redis is down, while the REST API keeps
# working (DESIGN: "Redis down must not take the REST API down"); healthy
# again once Redis is back, without touching nginx.
use strict;
use warnings;
use Test::More;
use Ahava::Test;

setup(private_redis => 1);          # this file stops and restarts Redis
my $redis = Ahava::Test::redis();

start_nginx(<<'_EOC_');
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    env:ENCRYPTION_KEY;

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

# the worker connects to PostgreSQL and Redis asynchronously after it starts
my $r = poll_until(10, sub { my $r = request(GET => '/health'); $r->status == 200 && $r })
        || request(GET => '/health');
is($r->status, 200, '/health is 200') or diag($r->dump);
is_deeply($r->json, $OK, '/health body is {"status":"ok","postgres":"ok","redis":"ok"}')
    or diag($r->dump);
like($r->content_type, qr{^application/json\b}, '/health is application/json');
is($r->header('cache-control'), 'no-store', '/health is not cached');
ok(poll_until(5, sub { $redis->clients >= 1 }), 'nginx holds a Redis connection');

$r = request(GET => '/health', headers => { Authorization => 'Bearer nonsense' });
is($r->status, 200, '/health needs no token (and ignores a bad one)');

$r = request(HEAD => '/health', head => 1);
is($r->status, 200, 'HEAD /health is 200');

$r = request(POST => '/health', body => '{}',
             headers => { 'Content-Type' => 'application/json' });
api_error_is($r, 405, 'METHOD_NOT_ALLOWED', 'POST /health is a JSON 405');

api_ok(response(GET => '/api/visits', as => 'admin'), 'the API works with Redis up');

# --- Redis goes away -------------------------------------------------------
$redis->stop;

# the REST API first, right after the stop
for my $who (qw(admin patient1)) {
    api_ok(response(GET => '/api/visits', as => $who),
           "GET /api/visits as $who is 200 while Redis is down");
}
api_ok(response(GET => "/api/visits/$ID{visit3}", as => 'nurse1'),
       'GET /api/visits/:id is 200 while Redis is down');

{

    $r = poll_until(10, sub { my $r = request(GET => '/health'); $r->status == 503 && $r });
    ok($r, '/health turns 503 once Redis is down') or diag(response(GET => '/health')->dump);
    $r ||= request(GET => '/health');
    is($r->json && $r->json->{redis}, 'down', '... naming redis as down') or diag($r->dump);
    isnt($r->json && $r->json->{status}, 'ok', '... and the status as not ok');
}
is($r->json && $r->json->{postgres}, 'ok', '... postgres is still ok');
like($r->content_type, qr{^application/json\b}, '... still JSON');
unlike($r->raw, qr/<html/i, '... not HTML');

api_ok(response(GET => '/api/visits', as => 'admin'),
       'GET /api/visits is still 200 with Redis down');

# --- Redis is back on the same port ------------------------------------------
$redis->start;

$r = poll_until(15, sub { my $r = request(GET => '/health'); $r->status == 200 && $r });
ok($r, '/health is 200 again once Redis is back (no nginx restart)')
    or diag(response(GET => '/health')->dump);
is_deeply($r && $r->json, $OK, '... with the ok body');
{
    ok(poll_until(10, sub { $redis->clients >= 1 }),
       'nginx reconnected to the restarted Redis');
}
api_ok(response(GET => '/api/visits', as => 'admin'), 'the API still works');

done_ahava();
