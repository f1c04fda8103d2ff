# How nginx reaches PostgreSQL and Redis (issue 7): TLS to PostgreSQL
# (managed databases require it) with large results; a host name with
# several addresses ("localhost": ::1 first, the server on 127.0.0.1 only);
# the user's own libpq options and target_session_attrs kept; Redis ready
# only once AUTH and SELECT succeeded.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use File::Temp ();
use IO::Socket::INET;
use Socket ();
use JSON::PP ();
use Time::HiRes qw(time);

setup(pg_ssl => 1);

my $url = env_value('DATABASE_URL');
my ($port, $db) = $url =~ m{:(\d+)/([^/?]+)$} or die "url $url";

my $CONF = <<'_EOC_';
ahava_database          env:AHAVA_TEST_URL;
ahava_redis             env:AHAVA_TEST_REDIS;
ahava_jwt_secret        env:JWT_SECRET;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_user_cache_ttl    60s;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    error_page 400 401 403 404 405 413 414 429 494 500 501 502 503 504 505
               /_ahava_error;

    location = /health { ahava_health; }
    location /api/visits { ahava_visits; }
    location /api/messages { ahava_messages; }
    location / { return 404; }
    location = /_ahava_error { internal; ahava_error_page; }
}
_EOC_

sub nginx_with {
    my ($name, $pg, %o) = @_;
    return start_nginx($CONF, name => $name, workers => 1,
                       env => { AHAVA_TEST_URL => $pg,
                                AHAVA_TEST_REDIS => $o{redis} // env_value('REDIS_URL') });
}

my $JSON = JSON::PP->new->ascii;

# --- TLS: a 3 MB page comes whole and at once ---------------------------------
{
    my $n = nginx_with('tls', "postgresql://postgres\@127.0.0.1:$port/$db?sslmode=require");
    ok(poll_until(10, sub { response(GET => '/health', nginx => $n)->status == 200 }),
       'sslmode=require: healthy');
    is(psql_value(q{SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                    WHERE a.application_name = 'ahava-nginx' AND s.ssl}) >= 1 ? 1 : 0, 1,
       "nginx's connection is TLS (pg_stat_ssl)");
    my $content = "\x{1}" x 5000;
    for (1 .. 100) {
        response(POST => '/api/messages', as => 'nurse1', nginx => $n,
                 headers => { 'Content-Type' => 'application/json' },
                 body => $JSON->encode({ visitId => $ID{visit3}, recipientId => $ID{patient1},
                                         content => $content }))->status == 201
            or do { fail('a message'); last };
    }
    my $t0 = time;
    my $r = response(GET => "/api/messages/visit/$ID{visit3}?limit=100&offset=3", as => 'patient1',
                     nginx => $n, timeout => 30);
    api_ok($r, 'a 3 MB page over TLS: 200');
    is(scalar @{ ($r->json // {})->{data} || [] }, 100, '... all 100 messages');
    cmp_ok(time - $t0, '<', 5, sprintf('... in %.2f s (no wait for the query-timeout guard)',
                                       time - $t0));
    ok($n->stop, "nginx 'tls' exits");
    check_error_log($n);
}

# --- a host with several addresses ------------------------------------------------
{
    # the server listens on 127.0.0.1 only: 127.0.0.2 refuses, and libpq
    # goes on to the next address on a new socket
    my $n = nginx_with('hosts', "postgresql://postgres\@127.0.0.2,127.0.0.1:$port/$db?sslmode=disable");
    ok(poll_until(10, sub { response(GET => '/health', nginx => $n)->status == 200 }),
       'host=127.0.0.2,127.0.0.1 (the first refuses): healthy');
    api_ok(response(GET => '/api/visits', as => 'admin', nginx => $n), '... and serving');
    api_ok(response(GET => "/api/visits/$ID{visit3}", as => 'admin', nginx => $n), '... again');
    ok($n->stop, "nginx 'hosts' exits");
    check_error_log($n);
}
SKIP: {
    my ($err, @ai) = Socket::getaddrinfo('localhost', undef, { socktype => Socket::SOCK_STREAM() });
    my @fam = map { $_->{family} } @ai;
    skip 'localhost does not resolve to both ::1 and 127.0.0.1 here', 2
        unless grep({ $_ == Socket::AF_INET6() } @fam) && grep({ $_ == Socket::AF_INET() } @fam);
    my $n = nginx_with('localhost', "postgresql://postgres\@localhost:$port/$db?sslmode=disable");
    ok(poll_until(10, sub { response(GET => '/health', nginx => $n)->status == 200 }),
       'host "localhost" (::1 refused, 127.0.0.1 listening): healthy');
    api_ok(response(GET => '/api/visits', as => 'admin', nginx => $n), '... and serving');
    ok($n->stop, "nginx 'localhost' exits");
}

# --- the user's options and target_session_attrs ----------------------------------
{
    my $n = nginx_with('options', "postgresql://postgres\@127.0.0.1:$port/$db?sslmode=disable"
                       . '&options=-c%20default_transaction_read_only%3Don');
    api_ok(response(GET => '/api/visits', as => 'admin', nginx => $n),
           'options=-c default_transaction_read_only=on: reads work');
    my $r = response(POST => "/api/visits/$ID{visit1}/cancel", as => 'admin', nginx => $n,
                     headers => { 'Content-Type' => 'application/json' }, body => '{}');
    api_error_is($r, 500, 'INTERNAL', '... a mutation fails: the option reached the server');
    error_log_like(qr/read-only transaction/, '... "read-only transaction" in the log', nginx => $n);
    is(psql_value(qq{SELECT status FROM visits WHERE id = '$ID{visit1}'}), 'SCHEDULED',
       '... and nothing changed');
    ok($n->stop, "nginx 'options' exits");

    my $ro = nginx_with('read-only', "postgresql://postgres\@127.0.0.1:$port/$db?sslmode=disable"
                        . '&target_session_attrs=read-only');
    ok(poll_until(5, sub { response(GET => '/health', nginx => $ro)->status == 503 }),
       'target_session_attrs=read-only against a primary: PostgreSQL down, as libpq says');
    api_error_is(response(GET => '/api/visits', as => 'admin', nginx => $ro), 503,
                 'SERVICE_UNAVAILABLE', '... the API answers 503');
    ok($ro->stop, "nginx 'read-only' exits");

    my $rw = nginx_with('read-write', "postgresql://postgres\@127.0.0.1:$port/$db?sslmode=disable"
                        . '&target_session_attrs=read-write');
    api_ok(response(GET => '/api/visits', as => 'admin', nginx => $rw),
           'target_session_attrs=read-write: serving');
    ok($rw->stop, "nginx 'read-write' exits");
}

# --- Redis AUTH and SELECT ------------------------------------------------------------
{
    my $rport = free_port();
    my $dir = File::Temp::tempdir('ahava-redis-auth-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my ($rc, $out) = run_capture(['redis-server', '--port', $rport, '--bind', '127.0.0.1',
        '--requirepass', 'sesame', '--save', '', '--appendonly', 'no', '--daemonize', 'yes',
        '--dir', $dir, '--pidfile', "$dir/redis.pid", '--logfile', "$dir/redis.log"]);
    is($rc, 0, 'a Redis with a password') or diag($out);
    poll_until(5, sub { IO::Socket::INET->new(PeerAddr => "127.0.0.1:$rport") });

    my $bad = nginx_with('redis-bad-auth', env_value('DATABASE_URL'),
                         redis => "redis://:wrong\@127.0.0.1:$rport/2");
    my $h = response(GET => '/health', nginx => $bad);
    is($h->status, 503, 'a wrong Redis password: /health 503');
    is($h->json && $h->json->{redis}, 'down', '... naming redis');
    error_log_like(qr/redis AUTH failed/, '... "AUTH failed" in the log', nginx => $bad);
    ok($bad->stop, "nginx 'redis-bad-auth' exits");

    my $good = nginx_with('redis-auth', env_value('DATABASE_URL'),
                          redis => "redis://:sesame\@127.0.0.1:$rport/2");
    ok(poll_until(5, sub { response(GET => '/health', nginx => $good)->status == 200 }),
       'the right password and database 2: healthy');
    my $mon = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$rport") or die;
    print {$mon} "AUTH sesame\r\nMONITOR\r\n";
    $mon->blocking(0);
    api_ok(response(PATCH => "/api/visits/$ID{visit2}/status", as => 'nurse2', nginx => $good,
                    headers => { 'Content-Type' => 'application/json' },
                    body => '{"status":"ARRIVED"}'), 'a mutation');
    my $seen = '';
    poll_until(5, sub { sysread($mon, my $buf, 65536); $seen .= $buf // ''; $seen =~ /PUBLISH/ });
    like($seen, qr/\[2 [^\]]*\] "PUBLISH" "ahava:user:/, 'its event is published after AUTH, on database 2');
    close $mon;
    ok($good->stop, "nginx 'redis-auth' exits");
    run_capture(['redis-cli', '-p', $rport, '-a', 'sesame', 'shutdown', 'nosave']);
}

done_ahava();
