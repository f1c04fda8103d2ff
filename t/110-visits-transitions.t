# PATCH /api/visits/:id/status (SPEC §5, §4): the whole transition table as
# admin — every from-status (set with SQL) × every to-status: 200 for the
# seven SPEC transitions, 409 CONFLICT for the 29 others (same→same too),
# with actualStart / actualEnd / updatedAt as SPEC says; then bad bodies.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Visits;

setup();

my $NGINX = start_nginx(<<'_EOC_');
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

    location /api/visits { ahava_visits; }
    # nginx would refuse a large body first (413): here the module must
    location /big/ {
        client_max_body_size  1m;
        rewrite ^/big(/.*)$ $1 break;
        ahava_visits;
    }
    location / { return 404; }
    location @ahava_error { ahava_error_page; }
}
_EOC_

my $OLD = '2020-01-01T00:00:00.000Z';        # updatedAt of every fresh visit
my $START = '2021-06-01T08:00:00.000Z';      # a preset actualStart

my %ALLOWED = map { $_ => 1 } qw(SCHEDULED>EN_ROUTE SCHEDULED>ARRIVED SCHEDULED>IN_PROGRESS
                                 EN_ROUTE>ARRIVED EN_ROUTE>IN_PROGRESS ARRIVED>IN_PROGRESS
                                 IN_PROGRESS>COMPLETED);

# every pair, twice for the IN_PROGRESS targets: without and with actualStart
my @CASES;
for my $from (@STATUSES) {
    for my $to (@STATUSES) {
        push @CASES, { from => $from, to => $to, preset => 0 };
        push @CASES, { from => $from, to => $to, preset => 1 }
            if $to eq 'IN_PROGRESS' && $ALLOWED{"$from>$to"};
    }
}
is(scalar(grep { !$_->{preset} } @CASES), 36, '6 x 6 = 36 transitions');
is(scalar(grep { $ALLOWED{"$_->{from}>$_->{to}"} && !$_->{preset} } @CASES), 7, '7 of them allowed');

my @ids = new_visits([ map { { status => $_->{from},
    actualStart => $_->{preset} ? "TIMESTAMP '2021-06-01 08:00:00'" : undef } } @CASES ]);
$CASES[$_]{visit} = $ids[$_] for 0 .. $#CASES;

# what "now" is on the server, to check the times it writes
sub db_now { psql_value(q{SELECT to_char(LOCALTIMESTAMP(3), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')}) }

for my $c (@CASES) {
    my $name = "$c->{from} -> $c->{to}" . ($c->{preset} ? ' (actualStart already set)' : '');
    my $before = db_now();
    my $r = mutate('status', $c->{visit}, as => 'admin', body => { status => $c->{to} });
    my $after = db_now();
    my $row = visit_row($c->{visit});

    unless ($ALLOWED{"$c->{from}>$c->{to}"}) {
        api_error_is($r, 409, 'CONFLICT', "$name: 409 CONFLICT");
        ok($row->{status} eq $c->{from} && $row->{updatedAt} eq $OLD
           && !defined $row->{actualStart} && !defined $row->{actualEnd},
           "$name: the visit is unchanged") or diag(explain $row);
        next;
    }

    api_ok($r, "$name: 200") or next;
    my $d = $r->json->{data};
    is($d->{status}, $c->{to}, "$name: data.status");
    is($row->{status}, $c->{to}, "$name: stored");
    ok($row->{updatedAt} ge $before && $row->{updatedAt} le $after,
       "$name: updatedAt set to the time of the change")
        or diag("$before <= $row->{updatedAt} <= $after ?");
    is($d->{updatedAt}, $row->{updatedAt}, "$name: data.updatedAt is the stored one");

    if ($c->{to} eq 'IN_PROGRESS') {
        if ($c->{preset}) {
            is($row->{actualStart}, $START, "$name: actualStart kept");
        } else {
            ok(defined $row->{actualStart} && $row->{actualStart} ge $before
               && $row->{actualStart} le $after, "$name: actualStart set to now")
                or diag(explain $row);
        }
        is($d->{actualStart}, $row->{actualStart}, "$name: data.actualStart");
    } else {
        ok(!defined $row->{actualStart} && !defined $d->{actualStart}, "$name: actualStart still null");
    }

    if ($c->{to} eq 'COMPLETED') {
        ok(defined $row->{actualEnd} && $row->{actualEnd} ge $before
           && $row->{actualEnd} le $after, "$name: actualEnd set to now") or diag(explain $row);
        is($d->{actualEnd}, $row->{actualEnd}, "$name: data.actualEnd");
    } else {
        ok(!defined $row->{actualEnd} && !defined $d->{actualEnd}, "$name: actualEnd still null");
    }
}

# a walk through every state keeps actualStart from the first IN_PROGRESS
{
    my $v = new_visit(status => 'SCHEDULED');
    api_ok(mutate('status', $v, as => 'nurse1', body => { status => 'EN_ROUTE' }), 'walk: EN_ROUTE (nurse)');
    api_ok(mutate('status', $v, as => 'nurse1', body => { status => 'ARRIVED' }), 'walk: ARRIVED');
    api_ok(mutate('status', $v, as => 'nurse1', body => { status => 'IN_PROGRESS' }), 'walk: IN_PROGRESS');
    my $started = visit_row($v)->{actualStart};
    my $r = mutate('status', $v, as => 'nurse1', body => { status => 'COMPLETED' });
    api_ok($r, 'walk: COMPLETED');
    my $row = visit_row($v);
    is($row->{actualStart}, $started, 'walk: actualStart unchanged by COMPLETED');
    ok($row->{actualEnd} ge $row->{actualStart}, 'walk: actualEnd >= actualStart');
    api_error_is(mutate('status', $v, as => 'nurse1', body => { status => 'IN_PROGRESS' }),
                 409, 'CONFLICT', 'walk: no way back from COMPLETED');
    is(visit_row($v)->{actualEnd}, $row->{actualEnd}, 'walk: actualEnd unchanged by the refusal');
}

# --- bad bodies: 400 VALIDATION_ERROR naming the field, nothing changed -------------------
my $V = new_visit(status => 'SCHEDULED');

sub details_name {
    my ($r, $field) = @_;
    my $det = ref $r->json eq 'HASH' ? $r->json->{details} : undef;
    return ref $det eq 'ARRAY' && grep { ref $_ eq 'HASH' && ($_->{field} // '') eq $field } @$det;
}

my @BAD = (
    ['missing status',         '{}',                                   'status'],
    ['status BOGUS',           '{"status":"BOGUS"}',                   'status'],
    ['status lowercase',       '{"status":"en_route"}',                'status'],
    ['status 5',               '{"status":5}',                         'status'],
    ['status null',            '{"status":null}',                      'status'],
    ['status ["EN_ROUTE"]',    '{"status":["EN_ROUTE"]}',              'status'],
    ['an unknown field',       '{"status":"EN_ROUTE","note":"x"}',     'note'],
    ['a duplicate key',        '{"status":"EN_ROUTE","status":"ARRIVED"}', 'body'],
    ['an empty body',          '',                                     'status'],
    ['not JSON',               'status=EN_ROUTE',                      'body'],
    ['truncated JSON',         '{"status":"EN_ROUTE"',                 'body'],
    ['bad UTF-8',              qq({"status":"EN_ROUTE\xff"}),          'body'],
);
for my $b (@BAD) {
    my ($name, $raw, $field) = @$b;
    my $r = mutate('status', $V, as => 'admin', raw => $raw);
    api_error_is($r, 400, 'VALIDATION_ERROR', "$name: 400 VALIDATION_ERROR");
    ok(details_name($r, $field), "$name: details name \"$field\"") or diag($r->dump);
}
{
    # a JSON array is not an object: 400, and SPEC §4 wants details on 400
    my $r = mutate('status', $V, as => 'admin', raw => '["status","EN_ROUTE"]');
    api_error_is($r, 400, 'VALIDATION_ERROR', 'an array body: 400 VALIDATION_ERROR');
    ok(details_name($r, 'body'), 'an array body: details name "body"') or diag($r->dump);
}
{
    my $r = mutate('status', $V, as => 'admin', raw => '"EN_ROUTE"');
    api_error_is($r, 400, 'VALIDATION_ERROR', 'a JSON string body: 400 VALIDATION_ERROR');
}
api_error_is(mutate('status', $V, as => 'admin', raw => '{"status":"EN_ROUTE"}',
                    content_type => 'text/plain'),
             415, 'UNSUPPORTED_MEDIA_TYPE', 'Content-Type text/plain: 415');
api_error_is(mutate('status', $V, as => 'admin', raw => '{"status":"EN_ROUTE"}',
                    content_type => ''),
             415, 'UNSUPPORTED_MEDIA_TYPE', 'no Content-Type: 415');
api_error_is(mutate('status', $V, as => 'admin', raw => '{"status":"EN_ROUTE"}',
                    content_type => 'application/jsonx'),
             415, 'UNSUPPORTED_MEDIA_TYPE', 'Content-Type application/jsonx: 415');
{
    my $big = '{"status":"EN_ROUTE","pad":"' . ('x' x 65536) . '"}';
    api_error_is(mutate('status', $V, as => 'admin', raw => $big), 413, 'PAYLOAD_TOO_LARGE',
                 'a body over 64 KiB: 413 PAYLOAD_TOO_LARGE (nginx\'s limit, as JSON)');
    my ($m, $p) = ('PATCH', "/big/api/visits/$V/status");
    my $r = response($m, $p, body => $big, headers => {
        Authorization => 'Bearer ' . token($ID{admin}), 'Content-Type' => 'application/json' });
    api_error_is($r, 413, 'PAYLOAD_TOO_LARGE', 'a body over 64 KiB under a 1m nginx limit: 413 from the module');
    my $chunked = Ahava::Test::HTTP::request($NGINX->port, $m, $p, headers => [
        ['Authorization', 'Bearer ' . token($ID{admin})], ['Content-Type', 'application/json'],
        ['Transfer-Encoding', 'chunked']],
        body => sprintf("%x\r\n%s\r\n0\r\n\r\n", length $big, $big));
    api_error_is($chunked, 413, 'PAYLOAD_TOO_LARGE', '... and chunked, without a Content-Length: 413');
    my $ok = '{"status":"EN_ROUTE"}' . (' ' x (65536 - 21));
    is(length $ok, 65536, 'a body of exactly 64 KiB ...');
    my $v2 = new_visit(status => 'SCHEDULED');
    api_ok(mutate('status', $v2, as => 'admin', raw => $ok), '... is accepted');
}
{
    my $row = visit_row($V);
    ok($row->{status} eq 'SCHEDULED' && $row->{updatedAt} eq $OLD,
       'after all the bad bodies the visit is unchanged');
}
# a caller who cannot see the visit learns nothing from a good body either
{
    my $r = mutate('status', $V, as => 'patient2', raw => '{"status":"EN_ROUTE"}');
    api_error_is($r, 404, 'NOT_FOUND', 'a good body from a non-participant: still 404');
}
# the code of a 405 is not fixed by SPEC; its status and the JSON are
{
    my $r = response(POST => "/api/visits/$V/status", as => 'admin',
                     headers => { 'Content-Type' => 'application/json' }, body => '{"status":"EN_ROUTE"}');
    is($r->status, 405, 'POST on /status: 405');
    ok($r->is_json && ref $r->json eq 'HASH' && !$r->json->{success}, '... as SPEC JSON') or diag($r->dump);
}

done_ahava();
