# GET /api/visits (SPEC §5, §4): role filtering against the demo fixture,
# the participants of each item, the status filter, pagination with total,
# every sortBy in both orders (status in the enum's declared order), query
# validation, and JSON for unknown routes and methods.
use strict;
use warnings;
use Test::More;
use Ahava::Test;

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

    location = /health { ahava_health; }
    location /api/visits { ahava_visits; }
    location / { return 404; }
    location @ahava_error { ahava_error_page; }
}
_EOC_

my $TS = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
my %V = map { $_ => $ID{"visit$_"} } 1 .. 5;
my %N = reverse %V;                           # id -> number

# Distinct createdAt / updatedAt (the seed gives all visits the same ones),
# in orders unlike the ids', so that sorting is really tested.
psql(q{
    UPDATE visits SET "createdAt" = LOCALTIMESTAMP(3) - (CASE id
        WHEN 'cdemovisit000000000000001' THEN interval '10 days'
        WHEN 'cdemovisit000000000000002' THEN interval '3 days'
        WHEN 'cdemovisit000000000000003' THEN interval '8 days'
        WHEN 'cdemovisit000000000000004' THEN interval '1 day'
        WHEN 'cdemovisit000000000000005' THEN interval '5 days' END),
      "updatedAt" = LOCALTIMESTAMP(3) - (CASE id
        WHEN 'cdemovisit000000000000001' THEN interval '1 hour'
        WHEN 'cdemovisit000000000000002' THEN interval '5 hours'
        WHEN 'cdemovisit000000000000003' THEN interval '2 hours'
        WHEN 'cdemovisit000000000000004' THEN interval '4 hours'
        WHEN 'cdemovisit000000000000005' THEN interval '3 hours' END)
});

# the oracle: each visit's sort keys straight from the database
my %key;
for my $row (@{ psql(q{SELECT id,
        extract(epoch FROM "scheduledStart"), extract(epoch FROM "createdAt"),
        extract(epoch FROM "updatedAt"),
        array_position(enum_range(NULL::"VisitStatus"), status), status
    FROM visits}) })
{
    my ($id, @k) = @$row;
    $key{ $N{$id} } = { scheduledStart => $k[0], createdAt => $k[1],
                        updatedAt => $k[2], status => $k[3], statusName => $k[4] };
}

sub expected_order {
    my ($by, $order, @nums) = @_;
    my @s = sort { $key{$a}{$by} <=> $key{$b}{$by} } @nums;
    return $order eq 'asc' ? @s : reverse @s;
}

# visit numbers of a list response's items, in order
sub nums { my ($r) = @_; [ map { $N{ $_->{id} } // $_->{id} } @{ $r->json->{data} || [] } ] }

sub list {
    my ($who, $query) = @_;
    return response(GET => '/api/visits' . (defined $query ? "?$query" : ''), as => $who);
}

# --- who sees what -----------------------------------------------------------
my %SEES = (patient1 => [1, 3, 5], patient2 => [2, 4], nurse1 => [1, 3, 4],
            nurse2 => [2, 5], doctor => [1, 2, 4, 5], admin => [1 .. 5]);

for my $who (sort keys %SEES) {
    my $r = list($who);
    api_ok($r, "$who: 200") or next;
    is_deeply([sort { $a <=> $b } @{ nums($r) }], $SEES{$who},
              "$who sees exactly visits @{ $SEES{$who} }");
    is_deeply($r->json->{meta}, { limit => 20, offset => 0, total => scalar @{ $SEES{$who} } },
              "$who: meta {limit 20, offset 0, total " . @{ $SEES{$who} } . '}');
    is_deeply(nums($r), [expected_order('createdAt', 'desc', @{ $SEES{$who} })],
              "$who: default order is createdAt desc");
}

# --- the items -------------------------------------------------------------------
my %USER = map { $_->[0] => { id => $_->[0], firstName => $_->[1], lastName => $_->[2] } }
           @{ psql(q{SELECT id, "firstName", "lastName" FROM users}) };
my %PART = map { $N{ $_->[0] } => { patient => $_->[1], nurse => $_->[2], doctor => $_->[3] } }
           @{ psql(q{SELECT v.id, b."patientId", v."nurseId", v."doctorId"
                     FROM visits v JOIN bookings b ON b.id = v."bookingId"}) };
{
    my $r = list('admin');
    for my $item (@{ $r->json->{data} }) {
        my $n = $N{ $item->{id} } // 'unknown';
        for my $role (qw(patient nurse doctor)) {
            my $uid = $PART{$n}{$role};
            is_deeply($item->{$role}, defined $uid ? $USER{$uid} : undef,
                      "visit $n: $role is " . (defined $uid ? '{id, firstName, lastName}' : 'null'));
        }
        is($item->{status}, $key{$n}{statusName}, "visit $n: status");
        like($item->{$_}, $TS, "visit $n: $_ is ISO-8601 UTC with milliseconds")
            for qw(scheduledStart createdAt updatedAt);
        for (qw(actualStart actualEnd)) {
            next unless defined $item->{$_};
            like($item->{$_}, $TS, "visit $n: $_ is ISO-8601 UTC with milliseconds");
        }
    }
    my ($v3) = grep { $_->{id} eq $V{3} } @{ $r->json->{data} };
    ok($v3 && exists $v3->{doctor} && !defined $v3->{doctor}, 'visit 3 has "doctor": null');
    my ($v2) = grep { $_->{id} eq $V{2} } @{ $r->json->{data} };
    is($v2 && $v2->{patient}{firstName}, "Zo\x{eb}", 'UTF-8 names survive (Zoë)');
}

# --- status filter -------------------------------------------------------------------
for my $st (qw(SCHEDULED EN_ROUTE ARRIVED IN_PROGRESS COMPLETED CANCELLED)) {
    my @want = sort { $a <=> $b } grep { $key{$_}{statusName} eq $st } 1 .. 5;
    my $r = list('admin', "status=$st");
    api_ok($r, "admin status=$st: 200") or next;
    is_deeply([sort { $a <=> $b } @{ nums($r) }], \@want, "admin status=$st: visits @want");
    is($r->json->{meta}{total}, scalar @want, "admin status=$st: total " . @want);
}
{
    my $r = list('nurse1', 'status=IN_PROGRESS');
    is_deeply(nums($r), [3], 'nurse1 status=IN_PROGRESS: visit 3 only');
    $r = list('patient2', 'status=SCHEDULED');
    is_deeply(nums($r), [], 'patient2 status=SCHEDULED: none');
    is($r->json && $r->json->{meta}{total}, 0, '... total 0');
}

# --- pagination ------------------------------------------------------------------------
{
    my @all = expected_order('createdAt', 'desc', 1 .. 5);
    my @seen;
    for my $off (0, 2, 4) {
        my $r = list('admin', "limit=2&offset=$off");
        api_ok($r, "admin limit=2 offset=$off: 200") or next;
        my $end = $off + 1 > $#all ? $#all : $off + 1;
        is_deeply(nums($r), [@all[$off .. $end]], "admin limit=2 offset=$off: the right page");
        is_deeply($r->json->{meta}, { limit => 2, offset => $off, total => 5 },
                  "admin limit=2 offset=$off: meta");
        push @seen, @{ nums($r) };
    }
    is_deeply(\@seen, \@all, 'the three pages together are every visit once, in order');

    for my $off (5, 7, 1000) {
        my $r = list('admin', "limit=2&offset=$off");
        api_ok($r, "offset=$off beyond the end: 200");
        is_deeply($r->json && $r->json->{data}, [], "offset=$off: empty data");
        is_deeply($r->json && $r->json->{meta}, { limit => 2, offset => $off, total => 5 },
                  "offset=$off: the total is still 5");
    }
    my $r = list('admin', 'limit=1');
    is_deeply(nums($r), [$all[0]], 'limit=1: one item');
    $r = list('admin', 'limit=100');
    is(scalar @{ nums($r) }, 5, 'limit=100 (the maximum): all five');
    $r = list('nurse1', 'limit=1&offset=1');
    is_deeply($r->json && $r->json->{meta}, { limit => 1, offset => 1, total => 3 },
              'nurse1 limit=1 offset=1: the total counts only the nurse\'s visits');
}

# --- sorting ------------------------------------------------------------------------------
for my $by (qw(scheduledStart createdAt updatedAt status)) {
    for my $order (qw(asc desc)) {
        my $r = list('admin', "sortBy=$by&sortOrder=$order");
        api_ok($r, "sortBy=$by sortOrder=$order: 200") or next;
        my @want = expected_order($by, $order, 1 .. 5);
        is_deeply(nums($r), \@want, "sortBy=$by sortOrder=$order: visits @want");
    }
    my $r = list('admin', "sortBy=$by");
    is_deeply(nums($r), [expected_order($by, 'desc', 1 .. 5)], "sortBy=$by: desc by default");
}
{
    # status sorts by the enum's declared order, not alphabetically
    my $r = list('admin', 'sortBy=status&sortOrder=asc');
    is_deeply([map { $_->{status} } @{ $r->json->{data} || [] }],
              [qw(SCHEDULED EN_ROUTE IN_PROGRESS COMPLETED CANCELLED)],
              'sortBy=status asc follows the enum order');
    # sort, filter and page together
    $r = list('doctor', 'sortBy=scheduledStart&sortOrder=asc&limit=2&offset=1');
    is_deeply(nums($r), [(expected_order('scheduledStart', 'asc', 1, 2, 4, 5))[1, 2]],
              'doctor: sortBy=scheduledStart asc, limit=2 offset=1');
    is($r->json && $r->json->{meta}{total}, 4, '... total 4');
}
# SPEC §4: an argument the endpoint does not know is a 400 (t/310 has more)
api_error_is(list('admin', 'foo=bar&limit=2'), 400, 'VALIDATION_ERROR',
             'an unknown query argument: 400');

# --- validation --------------------------------------------------------------------------
sub detail_fields {
    my ($j) = @_;
    my $d = ref $j eq 'HASH' ? $j->{details} : undef;
    return [sort keys %$d] if ref $d eq 'HASH';
    return [sort map { ref $_ eq 'HASH' ? ($_->{field} // '') : () } @$d] if ref $d eq 'ARRAY';
    return [];
}

my @bad = (
    [limit => '0'], [limit => '101'], [limit => 'abc'], [limit => '-1'], [limit => '1.5'],
    [limit => ''], [limit => '1e1'], [limit => '99999999999999999999'],
    [offset => '-1'], [offset => 'x'], [offset => '1.5'], [offset => ''],
    [status => 'BOGUS'], [status => 'scheduled'], [status => ''],
    [sortBy => 'password'], [sortBy => 'createdat'], [sortBy => 'id'],
    [sortBy => 'createdAt%3BDROP%20TABLE%20visits'], [sortBy => 'createdAt%20'],
    [sortOrder => 'up'], [sortOrder => 'ASC'], [sortOrder => ''],
);
for my $b (@bad) {
    my ($field, $value) = @$b;
    my $r = list('admin', "$field=$value");
    api_error_is($r, 400, 'VALIDATION_ERROR', "$field=$value: 400 VALIDATION_ERROR");
    is_deeply(detail_fields($r->json), [$field], "$field=$value: details name the field \"$field\"")
        or diag($r->dump);
}
{
    my $r = list('admin', 'limit=0&sortOrder=up');
    api_error_is($r, 400, 'VALIDATION_ERROR', 'two bad arguments: 400');
    is_deeply(detail_fields($r->json), [qw(limit sortOrder)], '... details name both');
    is(psql_value('SELECT count(*) FROM visits'), 5, 'the visits table is intact');
}

# --- routes and methods ---------------------------------------------------------------------
for my $path ('/api/visits/a/b', "/api/visits/$V{1}/nothing", '/api/visitsx',
              '/api/nothing', '/nope')
{
    my $r = response(GET => $path, as => 'admin');
    api_error_is($r, 404, 'NOT_FOUND', "GET $path: JSON 404");
}
for my $m (qw(POST PUT DELETE PATCH)) {
    my $r = response($m => '/api/visits', as => 'admin', body => '{}',
                     headers => { 'Content-Type' => 'application/json' });
    ok($r->status == 405 && $r->is_json && $r->json && !$r->json->{success},
       "$m /api/visits: JSON 405") or diag($r->dump);
    unlike($r->raw, qr/<html/i, "$m /api/visits: no HTML");
}

# The admin's total is the sum of counters that triggers keep
# (sql/005_visit_counts.sql): it must equal a count of the table after
# every kind of write, whoever makes it.
{
    require Ahava::Visits;
    my @ST = qw(SCHEDULED EN_ROUTE ARRIVED IN_PROGRESS COMPLETED CANCELLED);
    my $agree = sub {
        my ($name) = @_;
        my %db = map { $_->[0] => $_->[1] }
                 @{ psql(q{SELECT status::text, count(*) FROM visits GROUP BY 1}) };
        my $all = psql_value(q{SELECT count(*) FROM visits});
        my @bad;
        my $r = list('admin', 'limit=1');
        push @bad, "all: " . ($r->json ? $r->json->{meta}{total} : 'none') . " vs $all"
            unless $r->json && $r->json->{meta}{total} == $all;
        for my $st (@ST) {
            $r = list('admin', "status=$st&limit=1");
            my $want = $db{$st} // 0;
            push @bad, "$st: " . ($r->json ? $r->json->{meta}{total} : 'none') . " vs $want"
                unless $r->json && $r->json->{meta}{total} == $want;
        }
        ok(!@bad, "admin totals = counts of the table: $name") or diag(join("\n", @bad));
    };
    $agree->('at the start');
    my @new = Ahava::Visits::new_visits([map { { status => 'SCHEDULED' } } 1 .. 5]);
    $agree->('after 5 inserted by SQL');
    for my $step (['EN_ROUTE', 'nurse1'], ['ARRIVED', 'nurse1'], ['IN_PROGRESS', 'nurse1']) {
        my $r = Ahava::Visits::mutate('status', $new[0], as => $step->[1], body => { status => $step->[0] });
        is($r->status, 200, "PATCH to $step->[0]");
        $agree->("after the PATCH to $step->[0]");
    }
    my $r = Ahava::Visits::mutate('cancel', $new[1], as => 'admin', body => { reason => 'counter test' });
    is($r->status, 200, 'the admin cancels one');
    $agree->('after a cancellation');
    psql(qq{UPDATE visits SET status = 'COMPLETED', "updatedAt" = LOCALTIMESTAMP(3) WHERE id = '$new[2]'});
    psql(qq{UPDATE visits SET "updatedAt" = LOCALTIMESTAMP(3) WHERE id = '$new[3]'});
    $agree->('after UPDATEs by SQL (one of the status, one of something else)');
    psql(qq{DELETE FROM visits WHERE id = '$new[4]'});
    $agree->('after a DELETE');
    psql(q{BEGIN; UPDATE visits SET status = 'CANCELLED', "updatedAt" = LOCALTIMESTAMP(3)
           WHERE status = 'SCHEDULED'; ROLLBACK;});
    $agree->('after a rolled-back UPDATE of many');
}

done_ahava();
