# Authentication (SPEC §3): every way a token can be missing or bad, with
# the exact status and code; the user must exist and be active; the
# per-worker user cache and its contract; reasons logged, tokens never.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Digest::SHA qw(hmac_sha512);
use JSON::PP ();

setup();

my $CONF = <<'_EOC_';
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_user_cache_ttl    $TEST_NGINX_CACHE_TTL;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    client_max_body_size  64k;
    # room for the 10 KB token case: it must reach the module
    large_client_header_buffers  4 16k;
    error_page 400 401 403 404 405 413 414 429 500 502 503 504 @ahava_error;

    location = /health { ahava_health; }
    location /api/visits { ahava_visits; }
    location / { return 404; }
    location @ahava_error { ahava_error_page; }
}
_EOC_

# 'main' has no user cache (a deactivated user is refused at once);
# 'cached' keeps users for 60 s, one worker so the cache is deterministic.
# info level: nginx's own debug log would print request headers.
my $main   = start_nginx($CONF, name => 'main',   vars => { CACHE_TTL => '0' },
                         log_level => 'info');
my $cached = start_nginx($CONF, name => 'cached', vars => { CACHE_TTL => '60s' },
                         log_level => 'info', workers => 1);

my @TOKENS;     # every token sent, to check none reaches a log

sub with_auth {
    my ($value, %o) = @_;
    push @TOKENS, $1 if defined $value && $value =~ /^\S+\s+(\S{20,})/;
    return response(GET => $o{path} || '/api/visits',
                    nginx => $o{nginx} || $main,
                    headers => defined $value ? { Authorization => $value } : {});
}

sub bearer { with_auth("Bearer $_[0]", @_[1 .. $#_]) }

my $json = JSON::PP->new->canonical;
sub hdr { $json->encode({ alg => 'HS256', typ => 'JWT', %{ $_[0] || {} } }) }
sub pay { $json->encode({ userId => $ID{admin}, exp => time + 3600, %{ $_[0] || {} } }) }

# --- missing token -----------------------------------------------------------
{
    my $r = with_auth(undef);
    api_error_is($r, 401, 'TOKEN_MISSING', 'no Authorization header: 401 TOKEN_MISSING');
    is_deeply($r->json, { success => JSON::PP::false, error => 'No token provided',
                          code => 'TOKEN_MISSING' },
              '... with exactly the SPEC body') or diag($r->dump);

    api_error_is(with_auth('Basic x'), 401, 'TOKEN_MISSING', 'Authorization: Basic x: 401 TOKEN_MISSING');
    api_error_is(with_auth('Basic ' . token($ID{admin})), 401, 'TOKEN_MISSING',
                 'a valid JWT under the Basic scheme: 401 TOKEN_MISSING');
    api_error_is(with_auth('Bearer '), 401, 'TOKEN_MISSING', '"Bearer " with nothing: 401 TOKEN_MISSING');
    api_error_is(with_auth('Bearer'), 401, 'TOKEN_MISSING', '"Bearer" alone: 401 TOKEN_MISSING');
    api_error_is(with_auth(''), 401, 'TOKEN_MISSING', 'an empty Authorization header: 401 TOKEN_MISSING');
    api_error_is(with_auth(undef, path => "/api/visits/$ID{visit1}"), 401, 'TOKEN_MISSING',
                 'GET /api/visits/:id without a token: 401 TOKEN_MISSING');
}

# --- valid tokens --------------------------------------------------------------
for my $who (qw(patient1 patient2 nurse1 nurse2 doctor admin)) {
    api_ok(bearer(token($ID{$who})), "a valid token of $who: 200");
}
api_ok(with_auth('bearer ' . token($ID{admin})), 'the scheme is case-insensitive ("bearer")');
api_ok(with_auth('Bearer    ' . token($ID{admin}) . '   '), 'blanks around the token are ignored');
api_ok(bearer(token($ID{admin}, nbf => -60)), 'nbf in the past: 200');
api_ok(bearer(token($ID{admin}, header => { kid => 'k1' })), 'an extra header field (kid): 200');
api_ok(bearer(token($ID{admin}, claims => { email => 'a@b.c', iss => 'ahava' })),
       'extra claims: 200');
{
    # the role comes from the database, not from the token
    my $r = bearer(token($ID{patient1}, claims => { role => 'ADMIN' }));
    api_ok($r, 'a patient token claiming role ADMIN: 200');
    is($r->json && $r->json->{meta}{total}, 3, '... but it sees only the patient\'s 3 visits');
}

# --- bad tokens: TOKEN_INVALID ----------------------------------------------------
my $good = token($ID{admin});
my ($gh, $gp, $gs) = split /\./, $good;
my %invalid = (
    'alg none (unsigned)'                => token($ID{admin}, alg => 'none'),
    'alg none with a signature part'     => b64url(hdr({ alg => 'none' })) . '.' . b64url(pay()) . '.' . $gs,
    'alg HS512 when HS256 is pinned'     => token($ID{admin}, alg => 'HS512'),
    'alg HS384 when HS256 is pinned'     => token($ID{admin}, alg => 'HS384'),
    'alg RS256 when HS256 is pinned'     => token($ID{admin}, alg => 'RS256'),
    'header says HS256, HMAC-SHA512 signature' =>
        do { my $in = b64url(hdr()) . '.' . b64url(pay());
             "$in." . b64url(hmac_sha512($in, env_value('JWT_SECRET'))) },
    'no alg in the header'               => raw_jwt($json->encode({ typ => 'JWT' }), pay()),
    'signed with another secret'         => token($ID{admin}, secret => 'not-the-secret-' . rand),
    'signature of another token'         => "$gh.$gp." . (split /\./, token($ID{patient1}))[2],
    'signature altered'                  => "$gh.$gp." . (substr($gs, 0, 5) . (substr($gs, 5, 1) eq 'A' ? 'B' : 'A') . substr($gs, 6)),
    'payload altered (userId swapped)'   => "$gh." . b64url(pay({ userId => $ID{patient1} })) . ".$gs",
    'empty signature'                    => "$gh.$gp.",
    'nbf in the future'                  => token($ID{admin}, nbf => 3600),
    'garbage'                            => 'garbage',
    'two segments'                       => "$gh.$gp",
    'four segments'                      => "$good.$gs",
    'empty header segment'               => ".$gp.$gs",
    'bad base64 characters'              => "$gh+/.$gp.$gs",
    'padding characters'                 => "$gh==.$gp.$gs",
    'header not JSON'                    => raw_jwt('not json', pay()),
    'header a JSON array'                => raw_jwt('["HS256"]', pay()),
    'payload not JSON'                   => raw_jwt(hdr(), 'not json at all'),
    'payload a JSON string'              => raw_jwt(hdr(), '"admin"'),
    'payload with a duplicate key'       => raw_jwt(hdr(), qq({"userId":"$ID{patient1}","userId":"$ID{admin}","exp":) . (time + 3600) . '}'),
    'missing userId'                     => token(undef, omit => ['userId']),
    'numeric userId'                     => token(undef, claims => { userId => 12345 }),
    'userId null'                        => raw_jwt(hdr(), '{"userId":null,"exp":' . (time + 3600) . '}'),
    'empty userId'                       => token(''),
    'userId with bad characters'         => token("$ID{admin}'; --"),
    'userId with a slash'                => token("../$ID{admin}"),
    'userId of 65 characters'            => token('c' x 65),
    'missing exp'                        => token($ID{admin}, omit => ['exp']),
    'exp as a string'                    => token($ID{admin}, claims => { exp => '' . (time + 3600) }),
    'nbf as a string'                    => token($ID{admin}, claims => { nbf => '0' }),
    'unknown user'                       => token('cnosuchuser00000000000001'),
    'huge token (10 KB)'                 => token($ID{admin}, claims => { pad => 'x' x 10_000 }),
);
for my $case (sort keys %invalid) {
    my $r = bearer($invalid{$case});
    api_error_is($r, 401, 'TOKEN_INVALID', "$case: 401 TOKEN_INVALID");
}
ok(length($invalid{'huge token (10 KB)'}) > 10_000, 'the huge token is over 10 KB');
{
    # nginx itself refuses a NUL in a header line (400, logged by nginx's
    # core with the header): it never reaches the module
    my $r = response(GET => '/api/visits', nginx => $main,
                     headers => { Authorization => "Bearer $gh.$gp\x00.$gs" });
    ok(($r->status == 400 || $r->status == 401) && $r->is_json,
       'a NUL byte in the token: a JSON 400/401') or diag($r->dump);
}
ok($main->running, 'nginx is still running after the bad tokens');

# --- expiry --------------------------------------------------------------------------
api_error_is(bearer(token($ID{admin}, exp => -10)), 401, 'TOKEN_EXPIRED', 'exp 10 s ago: 401 TOKEN_EXPIRED');
api_error_is(bearer(token($ID{admin}, exp => -86400)), 401, 'TOKEN_EXPIRED', 'exp a day ago: 401 TOKEN_EXPIRED');
api_error_is(bearer(token($ID{admin}, exp => 0)), 401, 'TOKEN_EXPIRED', 'exp = now: 401 TOKEN_EXPIRED');
api_error_is(bearer(token($ID{admin}, exp => -10, secret => 'other-secret')), 401, 'TOKEN_INVALID',
             'expired and signed with another secret: TOKEN_INVALID (the signature is checked first)');
api_error_is(bearer(token('cnosuchuser00000000000001', exp => -10)), 401, 'TOKEN_EXPIRED',
             'expired token of an unknown user: TOKEN_EXPIRED');

# --- inactive users ---------------------------------------------------------------------
my $fresh = 'ctestinactive000000000001';
my $fresh2 = 'ctestcached00000000000001';
psql(qq{INSERT INTO users (id, email, "firstName", "lastName", role, "isActive", "updatedAt")
        VALUES ('$fresh', 'inactive\@ahava.test', 'In', 'Active', 'NURSE', true, now()),
               ('$fresh2', 'cached\@ahava.test', 'Cac', 'Hed', 'DOCTOR', true, now())});

api_ok(bearer(token($fresh)), 'a fresh active user: 200');
psql(qq{UPDATE users SET "isActive" = false, "updatedAt" = now() WHERE id = '$fresh'});
api_error_is(bearer(token($fresh)), 401, 'TOKEN_INVALID',
             'the same user deactivated (ahava_user_cache_ttl 0): 401 TOKEN_INVALID at once');
api_error_is(bearer(token($fresh), path => "/api/visits/$ID{visit1}"), 401, 'TOKEN_INVALID',
             '... on the detail endpoint too');

# --- the user cache (60 s) ----------------------------------------------------------------
# Contract (SPEC §3: "a short-lived per-node cache (default 60 s)"): a user
# deactivated after a successful request keeps access on that worker until
# the entry expires; with the cache off (ttl 0) the refusal is immediate.
api_ok(bearer(token($fresh2), nginx => $cached), 'cached: a fresh user: 200 (now in the cache)');
api_ok(bearer(token($fresh2), nginx => $main), 'uncached: the same user: 200');
psql(qq{UPDATE users SET "isActive" = false, "updatedAt" = now() WHERE id = '$fresh2'});
api_ok(bearer(token($fresh2), nginx => $cached),
       'cached: deactivated within the TTL: still 200 (the cache\'s contract)');
api_error_is(bearer(token($fresh2), nginx => $main), 401, 'TOKEN_INVALID',
             'uncached: deactivated: 401 TOKEN_INVALID at once');
api_error_is(bearer(token($fresh), nginx => $cached), 401, 'TOKEN_INVALID',
             'cached: a user already inactive at first sight: 401');
api_error_is(bearer(token($fresh), nginx => $cached), 401, 'TOKEN_INVALID',
             'cached: ... and again (a cached refusal)');
# the cache never turns an expired or forged token of a cached user into a 200
api_error_is(bearer(token($ID{admin}, exp => -5), nginx => $cached), 401, 'TOKEN_EXPIRED',
             'cached: an expired token of a cached user: 401 TOKEN_EXPIRED');
api_error_is(bearer(token($ID{admin}, secret => 'forged'), nginx => $cached), 401, 'TOKEN_INVALID',
             'cached: a forged token of a cached user: 401 TOKEN_INVALID');

# --- the error log: reasons, never tokens ---------------------------------------------------
for my $reason ('no Authorization header', 'not a Bearer Authorization header',
                'expired', 'bad signature',
                'unexpected algorithm', 'malformed or unsigned token',
                'too many segments', 'bad character', 'bad header',
                'not yet valid', 'no exp claim', 'no valid userId claim',
                'unknown user', 'inactive user', 'bad token length')
{
    error_log_like(qr/authentication failed: \Q$reason\E/,
                   "the error log gives the reason \"$reason\"", nginx => $main);
}

$_->stop for $main, $cached;       # everything written
for my $n ($main, $cached) {
    # (nginx's core logs an invalid header line itself: the NUL case above)
    my $logs = join "\n", grep { !/client sent invalid header line/ }
                          split /\n/, $n->error_log . $n->access_log;
    my @leaks;
    for my $t (@TOKENS) {
        # the whole token, and its payload and signature segments
        my @parts = grep { defined && length >= 16 } ($t, (split /\./, $t)[1, 2]);
        push @leaks, $t if grep { index($logs, $_) >= 0 } @parts;
    }
    ok(!@leaks, "no token (or part of one) in the logs of '$n->{name}'")
        or diag("leaked: " . join("\n", map { substr($_, 0, 60) } @leaks));
}

done_ahava();
