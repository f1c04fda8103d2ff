# POST /api/visits/:id/location (SPEC §5, §4): the assigned nurse's position
# while EN_ROUTE / ARRIVED / IN_PROGRESS.  Range boundaries (exact values
# stored), every wrong type, JSON's lack of NaN/Infinity and overflowing
# numbers, the states, the nurse's users.lastKnown* columns, and the
# gpsCoordinates history capped at the newest 1000 points.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Visits;

setup();

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

    location /api/visits { ahava_visits; }
    location / { return 404; }
    location @ahava_error { ahava_error_page; }
}
_EOC_

my $TS = TS_RE;
sub post { mutate('location', $_[0], as => 'nurse1', raw => $_[1]) }
sub last_point {
    my ($v) = @_;
    my $r = psql(qq{SELECT ("gpsCoordinates"->-1->>'lat')::float8 = \$\$$_[1]\$\$::float8,
                           ("gpsCoordinates"->-1->>'lng')::float8 = \$\$$_[2]\$\$::float8,
                           "gpsCoordinates"->-1->>'timestamp', jsonb_array_length("gpsCoordinates")
                    FROM visits WHERE id = '$v'});
    return @{ $r->[0] };
}
sub nurse_pos {
    my ($lat, $lng) = @_;
    my $r = psql(qq{SELECT "lastKnownLat" = \$\$$lat\$\$::float8, "lastKnownLng" = \$\$$lng\$\$::float8,
                           to_char("lastLocationUpdate", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                    FROM users WHERE id = '$ID{nurse1}'});
    return @{ $r->[0] };
}
sub db_now { psql_value(q{SELECT to_char(LOCALTIMESTAMP(3), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')}) }

# --- accepted values, stored exactly ---------------------------------------------------------
my $V = new_visit(status => 'EN_ROUTE');
my $n = 0;
for my $p (['90', '180'], ['-90', '-180'], ['90.0', '-180.0'], ['0', '0'], ['-0', '-0.0'],
           ['-26.204103', '28.047305'], ['12.345678901234567', '-98.76543210987654'],
           ['1e1', '-1.5E2'], ['89.9999999', '179.9999999'], ['4.9e-324', '-2.2250738585072014e-308'])
{
    my ($lat, $lng) = @$p;
    my $before = db_now();
    my $r = post($V, qq({"lat":$lat,"lng":$lng}));
    api_ok($r, "lat $lat, lng $lng: 200") or next;
    $n++;
    my ($lat_ok, $lng_ok, $ts, $len) = last_point($V, $lat, $lng);
    ok($lat_ok eq 't' && $lng_ok eq 't', "lat $lat, lng $lng: stored exactly")
        or diag(psql_value(qq{SELECT "gpsCoordinates"->-1 FROM visits WHERE id = '$V'}));
    is($len, $n, "lat $lat, lng $lng: appended (point $n)");
    like($ts // '', $TS, "lat $lat, lng $lng: ISO timestamp");
    {
        # the answer is the point (as the event says it), not the visit with
        # its history; 16-17 significant digits must survive its JSON too
        # (15 digits do not round-trip every double)
        my $d = $r->json->{data} || {};
        is_deeply([sort keys %$d], [qw(lat lng nurseId timestamp visitId)],
                  "lat $lat, lng $lng: the answer is {visitId, nurseId, lat, lng, timestamp}");
        ok(($d->{visitId} // '') eq $V && ($d->{nurseId} // '') eq $ID{nurse1}
           && ($d->{timestamp} // '') eq ($ts // 'x'),
           "lat $lat, lng $lng: the answer names the visit, the nurse and the stored point's time");
        ok(($d->{lat} // 'x') == $lat && ($d->{lng} // 'x') == $lng,
           "lat $lat, lng $lng: the answer's point is the posted one")
            or diag(explain $d);
    }
    my ($nlat, $nlng, $when) = nurse_pos($lat, $lng);
    ok($nlat eq 't' && $nlng eq 't', "lat $lat, lng $lng: the nurse's lastKnownLat/Lng");
    ok(defined $when && $when ge $before && $when le db_now(),
       "lat $lat, lng $lng: lastLocationUpdate is now") or diag("$before / " . ($when // 'NULL'));
}
is(psql_value(qq{SELECT "updatedAt" > TIMESTAMP '2020-01-01' FROM visits WHERE id = '$V'}), 't',
   'the visit\'s updatedAt moved');
{
    my $v = new_visit(status => 'EN_ROUTE');
    api_ok(post($v, '{"lat":12.345678901234567,"lng":-98.76543210987654}'), 'a 17-digit point: 200');
    my $p = (response(GET => "/api/visits/$v", as => 'nurse1')->json->{data}{gpsCoordinates} || [])->[-1] || {};
    ok(($p->{lat} // 0) == 12.345678901234567 && ($p->{lng} // 0) == -98.76543210987654,
       'GET /api/visits/:id shows the point as stored') or diag(explain $p);
}

# --- refused values: 400 VALIDATION_ERROR naming the field, nothing stored --------------------------
my $count = $n;
my @BAD = (
    ['lat 90.0000001',      '{"lat":90.0000001,"lng":0}',       ['lat']],
    ['lat -90.0000001',     '{"lat":-90.0000001,"lng":0}',      ['lat']],
    ['lng 180.0000001',     '{"lat":0,"lng":180.0000001}',      ['lng']],
    ['lng -180.0000001',    '{"lat":0,"lng":-180.0000001}',     ['lng']],
    ['lat 91',              '{"lat":91,"lng":0}',               ['lat']],
    ['lng 181, lat -91',    '{"lat":-91,"lng":181}',            ['lat', 'lng']],
    ['lat 1e3',             '{"lat":1e3,"lng":0}',              ['lat']],
    ['lat "1"',             '{"lat":"1","lng":0}',              ['lat']],
    ['lng "1"',             '{"lat":0,"lng":"1"}',              ['lng']],
    ['lat null',            '{"lat":null,"lng":0}',             ['lat']],
    ['lat true',            '{"lat":true,"lng":0}',             ['lat']],
    ['lat []',              '{"lat":[],"lng":0}',               ['lat']],
    ['lat {}',              '{"lat":{},"lng":0}',               ['lat']],
    ['lat [1]',             '{"lat":[1],"lng":0}',              ['lat']],
    ['lat missing',         '{"lng":0}',                        ['lat']],
    ['lng missing',         '{"lat":0}',                        ['lng']],
    ['both missing',        '{}',                               ['lat', 'lng']],
    ['an extra field',      '{"lat":0,"lng":0,"alt":5}',        ['alt']],
    ['lat NaN',             '{"lat":NaN,"lng":0}',              ['body']],
    ['lat Infinity',        '{"lat":Infinity,"lng":0}',         ['body']],
    ['lat -Infinity',       '{"lat":-Infinity,"lng":0}',        ['body']],
    ['lat 1e400',           '{"lat":1e400,"lng":0}',            ['body']],
    ['lng -1e400',          '{"lat":0,"lng":-1e400}',           ['body']],
    ['lat 0x10',            '{"lat":0x10,"lng":0}',             ['body']],
    ['lat +1',              '{"lat":+1,"lng":0}',               ['body']],
    ['lat .5',              '{"lat":.5,"lng":0}',               ['body']],
);
for my $b (@BAD) {
    my ($name, $raw, $fields) = @$b;
    my $r = post($V, $raw);
    api_error_is($r, 400, 'VALIDATION_ERROR', "$name: 400 VALIDATION_ERROR");
    my %named = map { ($_->{field} // '') => 1 } grep { ref $_ eq 'HASH' }
                @{ (ref $r->json eq 'HASH' && ref $r->json->{details} eq 'ARRAY') ? $r->json->{details} : [] };
    ok(!grep({ !$named{$_} } @$fields), "$name: details name @$fields") or diag($r->dump);
}
is(psql_value(qq{SELECT jsonb_array_length("gpsCoordinates") FROM visits WHERE id = '$V'}), $count,
   'no refused value was stored');

# --- states ---------------------------------------------------------------------------------------------
{
    my %V = map { $_ => new_visit(status => $_) } @STATUSES;
    for my $s (@STATUSES) {
        my $r = post($V{$s}, '{"lat":-26.1,"lng":28.1}');
        if ($s =~ /^(?:EN_ROUTE|ARRIVED|IN_PROGRESS)$/) {
            api_ok($r, "$s: 200");
            is(visit_row($V{$s})->{status}, $s, "$s: the status is unchanged");
        } else {
            api_error_is($r, 409, 'CONFLICT', "$s: 409 CONFLICT");
            is(psql_value(qq{SELECT jsonb_array_length("gpsCoordinates") FROM visits WHERE id = '$V{$s}'}), 0,
               "$s: nothing stored");
        }
    }
}
# only the assigned nurse (SPEC §5): the other nurse cannot see it, the admin may not
{
    my $v = new_visit(status => 'ARRIVED');
    api_error_is(mutate('location', $v, as => 'nurse2', raw => '{"lat":1,"lng":1}'), 404, 'NOT_FOUND',
                 'another nurse: 404');
    api_error_is(mutate('location', $v, as => 'admin', raw => '{"lat":1,"lng":1}'), 403, 'FORBIDDEN',
                 'the admin: 403');
    my ($lat_ok) = nurse_pos(1, 1);
    is($lat_ok, 'f', "a refused update leaves the nurse's lastKnownLat alone");
}

# --- the history keeps the newest 1000 ------------------------------------------------------------------
my $PRELOAD = sub {
    my ($k) = @_;
    return qq{(SELECT jsonb_agg(jsonb_build_object('lat', round(i / 100.0, 2), 'lng', round(-i / 100.0, 2),
               'timestamp', to_char(TIMESTAMP '2024-01-01' + i * interval '1 second',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')) ORDER BY i) FROM generate_series(1, $k) i)};
};
{
    my $v = new_visit(status => 'IN_PROGRESS', gps => $PRELOAD->(1000));
    is(psql_value(qq{SELECT jsonb_array_length("gpsCoordinates") FROM visits WHERE id = '$v'}), 1000,
       'a visit preloaded with 1000 points');
    my $r = post($v, '{"lat":-33.9249,"lng":18.4241}');
    api_ok($r, 'one more point: 200');
    my $row = psql(qq{SELECT jsonb_array_length(g), (g->0->>'lat')::numeric, (g->998->>'lat')::numeric,
                             (g->-1->>'lat')::float8 = -33.9249, (g->-1->>'lng')::float8 = 18.4241,
                             (SELECT count(DISTINCT e->>'lat') FROM jsonb_array_elements(g) e)
                      FROM (SELECT "gpsCoordinates" g FROM visits WHERE id = '$v') x})->[0];
    is($row->[0], 1000, 'still 1000 points');
    is($row->[1] + 0, 0.02, 'the oldest (point 1) was dropped: point 2 is first');
    is($row->[2] + 0, 10, 'point 1000 is next to last');
    ok($row->[3] eq 't' && $row->[4] eq 't', 'the new point is last');
    is($row->[5], 1000, '1000 distinct points (no duplicate, no loss)');
    is(($r->json->{data} || {})->{lat}, -33.9249, 'the answer is the new point');
    api_ok(post($v, '{"lat":1,"lng":2}'), 'and another');
    is(psql_value(qq{SELECT (g->0->>'lat')::numeric || ',' || jsonb_array_length(g) || ',' || (g->-2->>'lat')
                     FROM (SELECT "gpsCoordinates" g FROM visits WHERE id = '$v') x}),
       '0.03,1000,-33.9249', 'the window slides by one point per update');
}
{
    my $v = new_visit(status => 'IN_PROGRESS', gps => $PRELOAD->(999));
    api_ok(post($v, '{"lat":5,"lng":6}'), '999 points + 1: 200');
    is(psql_value(qq{SELECT jsonb_array_length("gpsCoordinates") || ',' || ("gpsCoordinates"->0->>'lat')
                     FROM visits WHERE id = '$v'}), '1000,0.01', '... 1000 points, none dropped');
}
{
    # a history longer than the cap (written by someone else) is cut to the newest 1000
    my $v = new_visit(status => 'IN_PROGRESS', gps => $PRELOAD->(1005));
    api_ok(post($v, '{"lat":7,"lng":8}'), '1005 points + 1: 200');
    is(psql_value(qq{SELECT jsonb_array_length("gpsCoordinates") || ',' || ("gpsCoordinates"->0->>'lat')
                     || ',' || ("gpsCoordinates"->-1->>'lat') FROM visits WHERE id = '$v'}),
       '1000,0.07,7', '... the newest 1000 (points 7..1005 and the new one)');
}
{
    # a Prisma database may hold NULL (or a non-array) in gpsCoordinates
    my $v = new_visit(status => 'EN_ROUTE', gps => 'NULL');
    api_ok(post($v, '{"lat":3,"lng":4}'), 'gpsCoordinates NULL: 200');
    is(psql_value(qq{SELECT jsonb_array_length("gpsCoordinates") FROM visits WHERE id = '$v'}), 1,
       '... now one point');
    my $w = new_visit(status => 'EN_ROUTE', gps => q{'{"lat":1}'::jsonb});
    api_ok(post($w, '{"lat":3,"lng":4}'), 'gpsCoordinates an object: 200');
    is(psql_value(qq{SELECT jsonb_typeof("gpsCoordinates") || jsonb_array_length("gpsCoordinates")
                     FROM visits WHERE id = '$w'}), 'array1', '... replaced by a one-point array');
}

done_ahava();
