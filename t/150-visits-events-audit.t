# What a visit mutation tells others (SPEC §8, §11, README "Events" and
# "Security events"): the event published to Redis — its type, the channels
# (every participant but the actor, plus the replaced nurse or doctor of an
# assignment), the frame {type, data{visitId,...}, timestamp} — read by a
# real subscriber (a raw RESP client, PSUBSCRIBE ahava:user:*); nothing for a
# refused mutation; the audit_logs rows (assignments and cancellations in
# the mutation's own transaction, access denials, failed authentications)
# and their checksums; and with Redis stopped a mutation still answers 200.
use strict;
use warnings;
use Test::More;
use Digest::SHA qw(sha256_hex);
use Encode qw(encode_utf8);
use POSIX qw(floor);
use Time::Local qw(timegm);
use Time::HiRes qw(time);
use Ahava::Test;
use Ahava::Visits;

setup(private_redis => 1);

my $CONF = <<'_EOC_';
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
my $MAIN = start_nginx($CONF, name => 'main');

sub redis_state { my $r = response(GET => '/health'); ref $r->json eq 'HASH' ? $r->json->{redis} // '' : '' }
ok(poll_until(10, sub { redis_state() eq 'ok' }), 'nginx is connected to Redis');

my $SUB = Ahava::Visits::Sub->new(Ahava::Test::redis()->port, 'ahava:user:*');
my $TS = TS_RE;
my ($P1, $P2, $N1, $N2, $D, $A) = @ID{qw(patient1 patient2 nurse1 nurse2 doctor admin)};
my $D2 = new_user(role => 'DOCTOR');
my $REPORT_TEXT = 'REPORT-TEXT-MUST-NOT-TRAVEL wound clean';
my ($REPORT) = node_encrypt(['an earlier report']);

sub iso_epoch {
    my ($y, $mo, $d, $h, $mi, $s, $ms) = $_[0] =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)\.(\d+)Z$/ or return;
    return timegm($s, $mi, $h, $d, $mo - 1, $y) + $ms / 1000;
}

# Runs one mutation and checks what was published for it.
#   $want: { type, to => [user ids], data => { exact data }, keys => [data keys] }
sub events_ok {
    my ($name, $req, $want) = @_;
    $SUB->sync or BAIL_OUT('the subscriber does not receive');
    $SUB->take;
    my $t0 = time;
    my $r = mutate(@$req);
    my $t1 = time;
    api_ok($r, "$name: 200") or return;
    my $n = @{ $want->{to} };
    $SUB->wait_for($n, 5);
    $SUB->sync;                                 # and nothing more arrives
    my @m = $SUB->take;
    is_deeply([sort map { $_->{channel} } @m], [sort map { "ahava:user:$_" } @{ $want->{to} }],
              "$name: published once to each of " . join(', ', map { substr($_, 5, 8) } @{ $want->{to} }))
        or diag(join "\n", map { "$_->{channel} $_->{payload}" } @m);
    return unless @m;
    my %payloads = map { $_->{payload} => 1 } @m;
    is(scalar keys %payloads, 1, "$name: the same frame to everyone");
    my $f = $m[0]{json};
    ok(ref $f eq 'HASH' && ref $f->{data} eq 'HASH', "$name: the frame is a JSON object with data")
        or return;
    is_deeply([sort keys %$f], [qw(data timestamp type)], "$name: frame keys {type, data, timestamp}");
    is($f->{type}, $want->{type}, "$name: type $want->{type}");
    like($f->{timestamp} // '', $TS, "$name: timestamp ISO-8601 UTC with ms");
    my $e = iso_epoch($f->{timestamp} // '');
    ok(defined $e && $e >= floor($t0) - 1 && $e <= $t1 + 1, "$name: timestamp is the time of the change");
    is($f->{data}{visitId}, $req->[1], "$name: data.visitId");
    is_deeply([sort keys %{ $f->{data} }], [sort 'visitId', @{ $want->{keys} }], "$name: data keys")
        or diag(explain $f->{data});
    for my $k (sort keys %{ $want->{data} || {} }) {
        is_deeply($f->{data}{$k}, $want->{data}{$k}, "$name: data.$k");
    }
    return $f;
}

sub no_events {
    my ($name, $req, $status) = @_;
    $SUB->sync;
    $SUB->take;
    my $r = mutate(@$req);
    is($r->status, $status, "$name: $status");
    $SUB->sync;
    my @m = $SUB->take;
    is(scalar @m, 0, "$name: nothing published") or diag(join "\n", map { $_->{payload} } @m);
}

# --- the events -------------------------------------------------------------------------------
{
    my $v = new_visit(status => 'SCHEDULED');
    events_ok('status by the nurse', ['status', $v, as => 'nurse1', body => { status => 'EN_ROUTE' }],
        { type => 'VISIT_STATUS_UPDATED', to => [$P1, $D], keys => [qw(status previousStatus updatedBy)],
          data => { status => 'EN_ROUTE', previousStatus => 'SCHEDULED', updatedBy => $N1 } });
    events_ok('status by the admin', ['status', $v, as => 'admin', body => { status => 'IN_PROGRESS' }],
        { type => 'VISIT_STATUS_UPDATED', to => [$P1, $N1, $D], keys => [qw(status previousStatus updatedBy)],
          data => { status => 'IN_PROGRESS', previousStatus => 'EN_ROUTE', updatedBy => $A } });
    my $f = events_ok('location', ['location', $v, as => 'nurse1', body => { lat => -26.5, lng => 28.25 }],
        { type => 'NURSE_LOCATION_UPDATE', to => [$P1, $D], keys => [qw(nurseId lat lng timestamp)],
          data => { nurseId => $N1, lat => -26.5, lng => 28.25 } });
    is($f && $f->{data}{timestamp},
       psql_value(qq{SELECT "gpsCoordinates"->-1->>'timestamp' FROM visits WHERE id = '$v'}),
       'location: data.timestamp is the stored point\'s');
    $SUB->sync; $SUB->take;
    my $r = mutate('nurse-report', $v, as => 'nurse1', body => { nurseReport => $REPORT_TEXT });
    api_ok($r, 'nurse report: 200');
    $SUB->wait_for(2, 5); $SUB->sync;
    my @m = $SUB->take;
    is_deeply([sort map { $_->{channel} } @m], [sort map { "ahava:user:$_" } $P1, $D],
              'nurse report: NURSE_REPORT_ADDED to the patient and the doctor');
    ok(@m && !grep({ index($_->{payload}, 'REPORT-TEXT') >= 0 } @m), 'nurse report: the report does not travel');
    is_deeply($m[0]{json}{data}, { visitId => $v, nurseId => $N1 }, 'nurse report: data {visitId, nurseId}')
        if @m;
    is($m[0]{json}{type}, 'NURSE_REPORT_ADDED', 'nurse report: type') if @m;
    events_ok('status COMPLETED by the nurse', ['status', $v, as => 'nurse1', body => { status => 'COMPLETED' }],
        { type => 'VISIT_STATUS_UPDATED', to => [$P1, $D], keys => [qw(status previousStatus updatedBy)],
          data => { status => 'COMPLETED', previousStatus => 'IN_PROGRESS' } });
    events_ok('review by the doctor', ['doctor-review', $v, as => 'doctor', body => { doctorReview => 'fine', doctorRating => 5 }],
        { type => 'DOCTOR_REVIEW_ADDED', to => [$P1, $N1], keys => [qw(reviewedBy doctorRating)],
          data => { reviewedBy => $D, doctorRating => 5 } });
    events_ok('review by the admin', ['doctor-review', $v, as => 'admin', body => { doctorReview => 'again', doctorRating => 1 }],
        { type => 'DOCTOR_REVIEW_ADDED', to => [$P1, $N1, $D], keys => [qw(reviewedBy doctorRating)],
          data => { reviewedBy => $A, doctorRating => 1 } });
}
{
    my $v = new_visit(status => 'SCHEDULED', doctor => undef);
    events_ok('status on a visit without a doctor', ['status', $v, as => 'nurse1', body => { status => 'ARRIVED' }],
        { type => 'VISIT_STATUS_UPDATED', to => [$P1], keys => [qw(status previousStatus updatedBy)] });
    events_ok('location on a visit without a doctor', ['location', $v, as => 'nurse1', body => { lat => 1, lng => 2 }],
        { type => 'NURSE_LOCATION_UPDATE', to => [$P1], keys => [qw(nurseId lat lng timestamp)],
          data => { nurseId => $N1, lat => 1, lng => 2 } });
    events_ok('assign a doctor to a visit without one', ['assign-doctor', $v, as => 'admin', body => { doctorId => $D }],
        { type => 'DOCTOR_ASSIGNED', to => [$P1, $N1, $D], keys => [qw(doctorId previousDoctorId)],
          data => { doctorId => $D, previousDoctorId => undef } });
}
{
    my $v = new_visit(status => 'EN_ROUTE');
    events_ok('cancel by the patient', ['cancel', $v, as => 'patient1', body => { reason => 'feeling better' }],
        { type => 'VISIT_CANCELLED', to => [$N1, $D], keys => [qw(previousStatus cancelledBy reason)],
          data => { previousStatus => 'EN_ROUTE', cancelledBy => $P1, reason => 'feeling better' } });
    my $w = new_visit(status => 'IN_PROGRESS', patient => $P2, nurse => $N2);
    events_ok('cancel by the admin, no reason', ['cancel', $w, as => 'admin', body => {}],
        { type => 'VISIT_CANCELLED', to => [$P2, $N2, $D], keys => [qw(previousStatus cancelledBy reason)],
          data => { previousStatus => 'IN_PROGRESS', cancelledBy => $A, reason => undef } });
}
{
    my $v = new_visit(status => 'SCHEDULED');
    events_ok('assign-nurse (replaces nurse1)', ['assign-nurse', $v, as => 'admin', body => { nurseId => $N2 }],
        { type => 'NURSE_ASSIGNED', to => [$P1, $N2, $D, $N1], keys => [qw(nurseId previousNurseId)],
          data => { nurseId => $N2, previousNurseId => $N1 } });
    events_ok('assign-doctor (replaces the doctor)', ['assign-doctor', $v, as => 'admin', body => { doctorId => $D2 }],
        { type => 'DOCTOR_ASSIGNED', to => [$P1, $N2, $D2, $D], keys => [qw(doctorId previousDoctorId)],
          data => { doctorId => $D2, previousDoctorId => $D } });
    events_ok('assign the same nurse again: no one twice', ['assign-nurse', $v, as => 'admin', body => { nurseId => $N2 }],
        { type => 'NURSE_ASSIGNED', to => [$P1, $N2, $D2], keys => [qw(nurseId previousNurseId)],
          data => { nurseId => $N2, previousNurseId => $N2 } });
}
# refused mutations publish nothing
{
    my $v = new_visit(status => 'COMPLETED');
    no_events('409 (status of a completed visit)', ['status', $v, as => 'nurse1', body => { status => 'EN_ROUTE' }], 409);
    no_events('403 (a nurse cancels)', ['cancel', $v, as => 'nurse1', body => {}], 403);
    no_events('404 (another nurse)', ['status', $v, as => 'nurse2', body => { status => 'EN_ROUTE' }], 404);
    no_events('400 (bad body)', ['status', $v, as => 'admin', body => { status => 'NOPE' }], 400);
    no_events('400 (bad assignee)', ['assign-nurse', $v, as => 'admin', body => { nurseId => $D }], 400);
    no_events('401 (bad token)', ['status', $v, token => 'not.a.token', body => { status => 'EN_ROUTE' }], 401);
}

# --- audit_logs -----------------------------------------------------------------------------------
sub audit_rows {
    my ($where) = @_;
    my @cols = qw(id userId userRole action resource resourceId metadata createdAt checksum xmin);
    return [ map { my %h; @h{@cols} = @$_; \%h } @{ psql(qq{SELECT id, "userId", "userRole", action, resource,
        "resourceId", metadata::text, to_char("createdAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), checksum,
        xmin::text FROM audit_logs WHERE $where ORDER BY "createdAt", id}) } ];
}
sub checksum_of {
    my ($r) = @_;
    return sha256_hex(encode_utf8(join '|', map { $_ // '' }
        @$r{qw(id userId userRole action resource resourceId metadata createdAt)}));
}

# assignments and cancellations: in the mutation's own transaction
for my $case (['assign-nurse', { nurseId => $N2 }, 'NURSE_ASSIGNED', 'admin', 'ADMIN',
               { nurseId => $N2, previousNurseId => $N1 }],
              ['assign-doctor', { doctorId => $D2 }, 'DOCTOR_ASSIGNED', 'admin', 'ADMIN',
               { doctorId => $D2, previousDoctorId => $D }],
              ['cancel', { reason => 'no longer needed' }, 'VISIT_CANCELLED', 'patient1', 'PATIENT',
               { previousStatus => 'SCHEDULED', reason => 'no longer needed' }])
{
    my ($action, $body, $audit, $who, $role, $meta) = @$case;
    my $v = new_visit(status => 'SCHEDULED');
    api_ok(mutate($action, $v, as => $who, body => $body), "$action: 200");
    my $rows = audit_rows("\"resourceId\" = '$v'");
    is(scalar @$rows, 1, "$action: one audit_logs row, there when the answer is") or next;
    my $a = $rows->[0];
    is_deeply([@$a{qw(userId userRole action resource resourceId)}], [$ID{$who}, $role, $audit, 'visit', $v],
              "$action: userId, userRole, action $audit, resource visit, resourceId");
    is_deeply(JSON::PP::decode_json(encode_utf8($a->{metadata})), $meta, "$action: metadata");
    my ($xmin, $upd) = @{ psql(qq{SELECT xmin::text, to_char("updatedAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                                  FROM visits WHERE id = '$v'})->[0] };
    is($a->{xmin}, $xmin, "$action: written by the transaction that changed the visit (same xmin)");
    is($a->{createdAt}, $upd, "$action: createdAt = the visit's updatedAt");
    is($a->{checksum}, checksum_of($a), "$action: checksum = sha256 of the entry");
    error_log_like(qr/security event $audit on visit "$v"/, "$action: in the error log too");
}
{
    # refused: no row
    my $v = new_visit(status => 'COMPLETED');
    is(mutate('cancel', $v, as => 'admin', body => {})->status, 409, 'a refused cancel: 409');
    is(mutate('assign-nurse', $v, as => 'admin', body => { nurseId => $N2 })->status, 409, 'a refused assignment: 409');
    is(mutate('assign-nurse', $v, as => 'admin', body => { nurseId => $D })->status, 400, 'a bad assignee: 400');
    is(scalar @{ audit_rows("\"resourceId\" = '$v'") }, 0, '... no audit_logs row for any of them');
}
# an authorization denial (written in the background: polled)
{
    my $v = new_visit(status => 'SCHEDULED');
    api_error_is(mutate('cancel', $v, as => 'nurse1', body => {}), 403, 'FORBIDDEN', 'a nurse cancels: 403');
    my $rows;
    ok(poll_until(10, sub { $rows = audit_rows("action = 'ACCESS_DENIED' AND \"resourceId\" = '$v'"); @$rows }),
       '403: an ACCESS_DENIED row');
    my $a = $rows->[0] || {};
    is_deeply([@$a{qw(userId userRole resource)}], [$N1, 'NURSE', 'visit'], '403: userId, userRole, resource');
    is_deeply(eval { JSON::PP::decode_json(encode_utf8($a->{metadata})) }, { action => 'cancel' },
              '403: metadata names the action');
    error_log_like(qr/security event ACCESS_DENIED on visit "$v" by user "$N1" \(NURSE\)/, '403: in the error log');
}
# a failed authentication
{
    my $v = new_visit(status => 'SCHEDULED');
    my $bad = token($A, secret => 'not-the-secret');
    my $before = psql_value(q{SELECT count(*) FROM audit_logs WHERE action = 'AUTH_FAILED'});
    api_error_is(mutate('status', $v, token => $bad, body => { status => 'EN_ROUTE' }), 401, 'TOKEN_INVALID',
                 'a token with a bad signature: 401');
    my $rows;
    ok(poll_until(10, sub { $rows = audit_rows(q{action = 'AUTH_FAILED'}); @$rows > $before }),
       '401: an AUTH_FAILED row');
    my $a = $rows->[-1] || {};
    ok(!defined $a->{userId} && !defined $a->{userRole}, '401: no user, no role');
    is($a->{resource}, 'auth', '401: resource auth');
    my $meta = eval { JSON::PP::decode_json(encode_utf8($a->{metadata})) } || {};
    is($meta->{code}, 'TOKEN_INVALID', '401: metadata.code');
    ok(defined $meta->{reason} && length $meta->{reason}, "401: metadata.reason ($meta->{reason})");
    my (undef, undef, $sig) = split /\./, $bad;
    is(psql_value(qq{SELECT count(*) FROM audit_logs WHERE metadata::text LIKE '%$sig%'}), 0,
       '401: the token is in no audit row');
    error_log_unlike(qr/\Q$sig\E/, '401: nor in the error log');
}
# every row's checksum, recomputed in Perl and in SQL
{
    my $rows = audit_rows('TRUE');
    my %by = map { $_->{action} => 1 } @$rows;
    ok($by{$_}, "audit_logs has $_ rows") for qw(NURSE_ASSIGNED DOCTOR_ASSIGNED VISIT_CANCELLED ACCESS_DENIED AUTH_FAILED);
    for my $action (sort keys %by) {
        my @bad = grep { $_->{action} eq $action && $_->{checksum} ne checksum_of($_) } @$rows;
        my $n = grep { $_->{action} eq $action } @$rows;
        # the rows written in the background (ACCESS_DENIED, AUTH_FAILED) too:
        # over metadata::text as stored, not the JSON text as sent
        ok(!@bad, "$action: all $n checksums = sha256(id|userId|userRole|action|resource|resourceId|metadata::text|createdAt)")
            or diag(join "\n", map { "$_->{id} $_->{metadata}" } @bad[0 .. ($#bad > 2 ? 2 : $#bad)]);
    }
    my $sql_bad = psql(q{SELECT action, count(*) FROM audit_logs WHERE checksum <> encode(sha256(convert_to(
        concat_ws('|', id, coalesce("userId", ''), coalesce("userRole"::text, ''), action, resource,
                  coalesce("resourceId", ''), coalesce(metadata::text, ''),
                  to_char("createdAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')), 'UTF8')), 'hex')
        GROUP BY action ORDER BY action});
    my %sql_bad = map { $_->[0] => $_->[1] } @$sql_bad;
    is($sql_bad{$_} // 0, 0, "SQL recomputation: no bad checksum among the $_ rows")
        for qw(NURSE_ASSIGNED DOCTOR_ASSIGNED VISIT_CANCELLED ACCESS_DENIED AUTH_FAILED);
}

# --- Redis stopped: the mutation still answers 200 --------------------------------------------------
# On a second nginx, so that 'main' is stopped and its log checked before
# Redis goes away.
ok($MAIN->stop, "nginx 'main' exited on QUIT (before Redis is stopped)");
check_error_log($MAIN);
my $DOWN = start_nginx($CONF, name => 'redis-down', default => 1);
ok(poll_until(10, sub { redis_state() eq 'ok' }), "'redis-down' is connected to Redis");
{
    my $v = new_visit(status => 'EN_ROUTE');
    $SUB->disconnect;
    Ahava::Test::redis()->stop;
    my $r = mutate('assign-nurse', $v, as => 'admin', body => { nurseId => $N2 });
    api_ok($r, 'Redis down: assign-nurse still 200');
    ok($r->elapsed < 3, sprintf('... at once (%.3f s)', $r->elapsed));
    is(visit_row($v)->{nurseId}, $N2, '... and stored');
    is(scalar @{ audit_rows("\"resourceId\" = '$v'") }, 1, '... with its audit row');
    my $s = mutate('location', $v, as => 'nurse2', body => { lat => 1, lng => 2 });
    api_ok($s, 'Redis down: a location update still 200');
    # the disconnect must be noticed (hiredis runs ev.cleanup before the
    # disconnect callback: a missed one left a dangling context, no
    # reconnect, and a double free at exit — the log checks below)
    ok(poll_until(6, sub { redis_state() eq 'down' }),
       'Redis stopped: GET /health says "redis":"down"');
    is(response(GET => '/health')->status, 503, '... with 503');
    ok(poll_until(5, sub { $DOWN->error_log =~ /events and jobs wait in PostgreSQL/ }),
       'the wait is logged (the events stay in the outbox)');

    Ahava::Test::redis()->start;
    $SUB = Ahava::Visits::Sub->new(Ahava::Test::redis()->port, 'ahava:user:*');   # before nginx is back
    ok(poll_until(15, sub { redis_state() eq 'ok' }), 'Redis back: /health says ok');
    # what committed meanwhile arrives now: once each, in commit order
    $SUB->wait_for(6, 10);
    $SUB->sync;
    my %seq;
    push @{ $seq{ $_->{channel} } }, ($_->{json} || {})->{type} // '?' for $SUB->take;
    is_deeply(\%seq, { (map { ("ahava:user:$_" => [qw(NURSE_ASSIGNED NURSE_LOCATION_UPDATE)]) } $P1, $D),
                        (map { ("ahava:user:$_" => [qw(NURSE_ASSIGNED)]) } $N1, $N2) },
              'Redis back: the two events committed while it was down arrive, once each, in order '
              . '(the location to the patient and the doctor; the assignment to them and both nurses)')
        or diag(explain \%seq);
    # nginx reconnects with back-off: update the location until an event comes
    my $got = poll_until(8, sub {
        mutate('location', $v, as => 'nurse2', body => { lat => 3, lng => 4 });
        $SUB->sync;
        grep { $_->{json} && $_->{json}{type} eq 'NURSE_LOCATION_UPDATE' } $SUB->take;
    });
    ok($got, 'Redis back: nginx reconnects and events flow again');
}

error_log_like(qr/redis disconnected/, 'the disconnect is logged');
error_log_like(qr/redis connected(?s:.*)redis disconnected(?s:.*)redis connected/, '... and the reconnect');

done_ahava();
