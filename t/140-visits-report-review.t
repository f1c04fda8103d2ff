# The content mutations of a visit (SPEC §5, §10): the nurse report (length
# in code points, encrypted at rest, readable by Node's crypto and the other
# way round, only while IN_PROGRESS / COMPLETED), the doctor review (lengths,
# an integer rating 1..5, needs a report), cancellation (who, in which
# states) and the assignments (the target must be an active user of the
# right role; not on a final visit).
use strict;
use warnings;
use utf8;
use Test::More;
use Encode qw(encode_utf8);
use MIME::Base64 qw(decode_base64);
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

sub stored_report { psql_value(qq{SELECT "nurseReport" FROM visits WHERE id = '$_[0]'}) }
sub details_name {
    my ($r, $field) = @_;
    my $det = ref $r->json eq 'HASH' ? $r->json->{details} : undef;
    return ref $det eq 'ARRAY' && grep { ref $_ eq 'HASH' && ($_->{field} // '') eq $field } @$det;
}
sub bad_is {
    my ($r, $field, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    api_error_is($r, 400, 'VALIDATION_ERROR', "$name: 400 VALIDATION_ERROR")
        and ok(details_name($r, $field), "$name: details name \"$field\"") || diag($r->dump);
}

# ===================================================================================
# nurse report
# ===================================================================================
my $EMOJI = "\x{1F48A}";            # 4 bytes in UTF-8, 2 UTF-16 units, 1 code point
my $EURO  = "\x{20AC}";             # 3 bytes in UTF-8, 1 unit, 1 code point
sub report { mutate('nurse-report', $_[0], as => 'nurse1', body => { nurseReport => $_[1] }) }

{
    my @ok = (
        ['1 character',                              'x'],
        ['20000 ASCII characters',                   'a' x 20000],
        ['20000 3-byte characters (60000 bytes)',    $EURO x 20000],
        ['16000 emoji (64000 bytes, 32000 UTF-16 units)', $EMOJI x 16000],
        ['1000 emoji + 19000 ASCII = 20000 code points (23000 bytes, 21000 UTF-16 units)',
         ($EMOJI x 1000) . ('b' x 19000)],
        ['a report with newlines, quotes, NUL-free controls and RTL text',
         qq{Line 1\nLine "2"\t\\ back\r\nשלום עולם — Ngiyabonga ñ ü}],
    );
    my @ids = new_visits([ map { { status => 'IN_PROGRESS' } } @ok ]);
    for my $i (0 .. $#ok) {
        my ($name, $text) = @{ $ok[$i] };
        my $r = report($ids[$i], $text);
        api_ok($r, "report of $name: 200") or next;
        ok(($r->json->{data}{nurseReport} // '') eq $text, "report of $name: the answer shows it decrypted");
        my $ct = stored_report($ids[$i]);
        like($ct, qr/^v2:[A-Za-z0-9+\/]+={0,2}:[A-Za-z0-9+\/]+={0,2}:[A-Za-z0-9+\/]+={0,2}$/,
             "report of $name: stored as v2:<iv>:<tag>:<ct>");
        my (undef, $iv, $tag, $body) = split /:/, $ct;
        ok(length(decode_base64($iv)) == 12 && length(decode_base64($tag)) == 16
           && length(decode_base64($body)) == length(encode_utf8($text)),
           "report of $name: 12-byte IV, 16-byte tag, ciphertext as long as the UTF-8 text");
        ok(index($ct, substr($text, 0, 20)) < 0 && index(decode_base64($body), encode_utf8(substr($text, 0, 20))) < 0,
           "report of $name: the plaintext is not in the row") if length $text >= 8;
        my ($plain) = node_decrypt([$ct]);
        ok(defined $plain && $plain eq $text, "report of $name: Node's crypto decrypts it to the text");
        my $g = response(GET => "/api/visits/$ids[$i]", as => 'doctor');
        ok(($g->json->{data}{nurseReport} // '') eq $text, "report of $name: GET shows it decrypted");
    }
}
{
    my $text = 'SECRET-MARKER: the same report twice';
    my ($a, $b) = new_visits([{ status => 'COMPLETED' }, { status => 'COMPLETED' }]);
    api_ok(report($a, $text), 'the same text on two visits');
    api_ok(report($b, $text), '...');
    isnt(stored_report($a), stored_report($b), '... gives two ciphertexts (random IV)');
    is(psql_value(q{SELECT count(*) FROM visits WHERE "nurseReport" LIKE '%SECRET-MARKER%'}), 0,
       'the plaintext is in no row');
    api_ok(report($a, 'replaced'), 'a second report replaces the first');
    is((node_decrypt([stored_report($a)]))[0], 'replaced', '... stored');
}
{
    my $v = new_visit(status => 'IN_PROGRESS');
    my @bad = (
        ['an empty report',                  ''],
        ['20001 ASCII characters',           'a' x 20001],
        ['20001 3-byte characters',          $EURO x 20001],
        ['1000 emoji + 19001 ASCII = 20001 code points', ($EMOJI x 1000) . ('b' x 19001)],
    );
    bad_is(report($v, $_->[1]), 'nurseReport', "report of $_->[0]") for @bad;
    bad_is(mutate('nurse-report', $v, as => 'nurse1', raw => $_->[1]), 'nurseReport', "report $_->[0]")
        for ['missing', '{}'], ['null', '{"nurseReport":null}'], ['a number', '{"nurseReport":5}'],
            ['an array', '{"nurseReport":["x"]}'], ['an object', '{"nurseReport":{"a":1}}'];
    bad_is(mutate('nurse-report', $v, as => 'nurse1', body => { nurseReport => 'x', extra => 1 }),
           'extra', 'report with an unknown field');
    # SPEC: 1-20000 characters AND bodies of at most 64 KiB; 20000 emoji are
    # 80000 bytes of UTF-8 (more as \u escapes), so they cannot fit a body.
    api_error_is(report($v, $EMOJI x 20000), 413, 'PAYLOAD_TOO_LARGE',
                 'report of 20000 emoji (80000 bytes of body): 413, over the 64 KiB body limit');
    ok(!defined stored_report($v), 'no refused report was stored');
}
# states
{
    my %v = map { $_ => new_visit(status => $_) } @STATUSES;
    for my $s (@STATUSES) {
        my $r = report($v{$s}, "report while $s");
        if ($s eq 'IN_PROGRESS' || $s eq 'COMPLETED') {
            api_ok($r, "a report while $s: 200");
        } else {
            api_error_is($r, 409, 'CONFLICT', "a report while $s: 409 CONFLICT");
            ok(!defined stored_report($v{$s}), "a report while $s: nothing stored");
        }
    }
}
# written by Node, read by nginx
{
    my $text = "Written by the Node app \x{2014} caf\x{e9} $EMOJI\nsecond line: a:b:c";
    my $v = new_visit(status => 'COMPLETED');
    my ($v2) = node_encrypt([$text]);
    psql(qq{UPDATE visits SET "nurseReport" = '$v2' WHERE id = '$v'});
    my $r = response(GET => "/api/visits/$v", as => 'nurse1');
    is($r->json->{data}{nurseReport}, $text, 'a report encrypted by Node (v2) is returned decrypted by GET');
    my ($hex) = node_encrypt([$text], format => 'hex');
    psql(qq{UPDATE visits SET "nurseReport" = '$hex' WHERE id = '$v'});
    is(response(GET => "/api/visits/$v", as => 'patient1')->json->{data}{nurseReport}, $text,
       '... and so is the legacy hex form');
    # and a review answer (another mutation) decrypts it too
    my $rv = mutate('doctor-review', $v, as => 'doctor', body => { doctorReview => 'ok', doctorRating => 3 });
    is($rv->json->{data}{nurseReport}, $text, '... as does the answer of a doctor review');
}

# ===================================================================================
# doctor review
# ===================================================================================
my ($REPORT) = node_encrypt(['a report to review']);
sub review { mutate('doctor-review', $_[0], as => $_[2] // 'doctor', raw => $_[1]) }
{
    my @ok = (
        ['rating 1',              { doctorReview => 'r', doctorRating => 1 }],
        ['rating 5',              { doctorReview => 'Excellent care.', doctorRating => 5 }],
        ['a 5000-character review', { doctorReview => 'z' x 5000, doctorRating => 3 }],
        ['5000 3-byte characters', { doctorReview => $EURO x 5000, doctorRating => 2 }],
        ['2500 emoji (5000 UTF-16 units)', { doctorReview => $EMOJI x 2500, doctorRating => 4 }],
    );
    my @ids = new_visits([ map { { status => 'COMPLETED', nurseReport => $REPORT } } @ok ]);
    for my $i (0 .. $#ok) {
        my ($name, $body) = @{ $ok[$i] };
        my $r = review($ids[$i], json_text($body));
        api_ok($r, "review with $name: 200") or next;
        my $d = $r->json->{data};
        ok($d->{doctorReview} eq $body->{doctorReview} && $d->{doctorRating} == $body->{doctorRating},
           "review with $name: in the answer");
        my $row = visit_row($ids[$i]);
        ok($row->{doctorReview} eq $body->{doctorReview} && $row->{doctorRating} == $body->{doctorRating},
           "review with $name: stored");
        is($d->{nurseReport}, 'a report to review', "review with $name: the answer carries the report decrypted");
    }
    my $v = new_visit(status => 'COMPLETED', nurseReport => $REPORT);
    api_ok(review($v, '{"doctorReview":"by the admin","doctorRating":2}', 'admin'), 'the admin may review');

    # JSON has one number type: 5.0 and 4e0 are integers, as in JavaScript
    for my $t (['5.0', 5], ['4e0', 4], ['1.000', 1]) {
        my ($text, $n) = @$t;
        my $w = new_visit(status => 'COMPLETED', nurseReport => $REPORT);
        my $r = review($w, qq({"doctorReview":"r","doctorRating":$text}));
        api_ok($r, "rating $text: 200") or next;
        like($r->raw, qr/"doctorRating":$n[,}]/,
           "rating $text: answered as the integer $n");
        is(visit_row($w)->{doctorRating}, $n, "rating $text: stored as $n");
    }
}
{
    my $v = new_visit(status => 'COMPLETED', nurseReport => $REPORT);
    my @bad = (
        ['rating 0',             '{"doctorReview":"x","doctorRating":0}',     'doctorRating'],
        ['rating 6',             '{"doctorReview":"x","doctorRating":6}',     'doctorRating'],
        ['rating -1',            '{"doctorReview":"x","doctorRating":-1}',    'doctorRating'],
        ['rating 4.5',           '{"doctorReview":"x","doctorRating":4.5}',   'doctorRating'],
        ['rating 6.0',           '{"doctorReview":"x","doctorRating":6.0}',   'doctorRating'],
        ['rating 0.0',           '{"doctorReview":"x","doctorRating":0.0}',   'doctorRating'],
        ['rating 4.0000001',     '{"doctorReview":"x","doctorRating":4.0000001}', 'doctorRating'],
        ['rating "5"',           '{"doctorReview":"x","doctorRating":"5"}',   'doctorRating'],
        ['rating null',          '{"doctorReview":"x","doctorRating":null}',  'doctorRating'],
        ['rating true',          '{"doctorReview":"x","doctorRating":true}',  'doctorRating'],
        ['rating 1e400',         '{"doctorReview":"x","doctorRating":1e400}', 'body'],
        ['rating 2^63',          '{"doctorReview":"x","doctorRating":9223372036854775808}', 'body'],
        ['rating 2^63-1',        '{"doctorReview":"x","doctorRating":9223372036854775807}', 'doctorRating'],
        ['no rating',            '{"doctorReview":"x"}',                       'doctorRating'],
        ['no review',            '{"doctorRating":3}',                         'doctorReview'],
        ['an empty review',      '{"doctorReview":"","doctorRating":3}',       'doctorReview'],
        ['a 5001-character review', json_text({ doctorReview => 'z' x 5001, doctorRating => 3 }), 'doctorReview'],
        ['5001 3-byte characters', json_text({ doctorReview => $EURO x 5001, doctorRating => 3 }), 'doctorReview'],
        ['a numeric review',     '{"doctorReview":5,"doctorRating":3}',        'doctorReview'],
        ['an unknown field',     '{"doctorReview":"x","doctorRating":3,"stars":3}', 'stars'],
    );
    for my $b (@bad) {
        my $r = review($v, $b->[1]);
        bad_is($r, $b->[2], "review $b->[0]");
    }
    ok(!defined visit_row($v)->{doctorReview}, 'no refused review was stored');
}
{
    my $v = new_visit(status => 'COMPLETED');
    api_error_is(review($v, '{"doctorReview":"x","doctorRating":3}'), 409, 'CONFLICT',
                 'a review of a visit without a nurse report: 409 CONFLICT');
    api_error_is(review($v, '{"doctorReview":"x","doctorRating":3}', 'admin'), 409, 'CONFLICT',
                 '... by the admin too');
    api_ok(report($v, 'now there is one'), 'the nurse reports');
    api_ok(review($v, '{"doctorReview":"x","doctorRating":3}'), 'then the review: 200');
}

# ===================================================================================
# cancel
# ===================================================================================
{
    my %want = (                    # state => [patient, admin]
        SCHEDULED   => [200, 200], EN_ROUTE  => [200, 200],
        ARRIVED     => [409, 200], IN_PROGRESS => [409, 200],
        COMPLETED   => [409, 409], CANCELLED => [409, 409],
    );
    for my $s (@STATUSES) {
        my @who = qw(patient1 admin);
        for my $k (0, 1) {
            my $v = new_visit(status => $s);
            my $r = mutate('cancel', $v, as => $who[$k], body => { reason => "by $who[$k]" });
            my $name = "cancel by $who[$k] while $s";
            if ($want{$s}[$k] == 200) {
                api_ok($r, "$name: 200") and is($r->json->{data}{status}, 'CANCELLED', "$name: data.status");
                is(visit_row($v)->{status}, 'CANCELLED', "$name: stored");
                is(psql_value(qq{SELECT metadata->>'previousStatus' || '/' || (metadata->>'reason')
                                 FROM audit_logs WHERE action = 'VISIT_CANCELLED' AND "resourceId" = '$v'}),
                   "$s/by $who[$k]", "$name: audit row with previousStatus and reason");
            } else {
                api_error_is($r, 409, 'CONFLICT', "$name: 409 CONFLICT");
                is(visit_row($v)->{status}, $s, "$name: unchanged");
            }
        }
    }
    my $v = new_visit(status => 'SCHEDULED');
    api_ok(mutate('cancel', $v, as => 'patient1', raw => ''), 'cancel without a body (reason is optional)');
    $v = new_visit(status => 'SCHEDULED');
    api_ok(mutate('cancel', $v, as => 'patient1', raw => '{"reason":null}'), 'cancel with reason null');
    $v = new_visit(status => 'SCHEDULED');
    bad_is(mutate('cancel', $v, as => 'patient1', raw => '{"reason":5}'), 'reason', 'cancel with a numeric reason');
    bad_is(mutate('cancel', $v, as => 'patient1', raw => '{"why":"x"}'), 'why', 'cancel with an unknown field');
    api_error_is(mutate('cancel', $v, as => 'patient2', body => {}), 404, 'NOT_FOUND',
                 'another patient cannot cancel it: 404');
    is(visit_row($v)->{status}, 'SCHEDULED', 'the refused cancels changed nothing');
}

# ===================================================================================
# assignments
# ===================================================================================
my $INACTIVE_NURSE  = new_user(role => 'NURSE', active => 0);
my $INACTIVE_DOCTOR = new_user(role => 'DOCTOR', active => 0);
my $NURSE3  = new_user(role => 'NURSE');
my $DOCTOR2 = new_user(role => 'DOCTOR');
for my $kind (['assign-nurse', 'nurseId', $NURSE3, $INACTIVE_NURSE, $ID{nurse1}, 'nurse'],
              ['assign-doctor', 'doctorId', $DOCTOR2, $INACTIVE_DOCTOR, $ID{doctor}, 'doctor'])
{
    my ($action, $field, $good, $inactive, $old, $what) = @$kind;
    for my $s (@STATUSES) {
        my $v = new_visit(status => $s);
        my $r = mutate($action, $v, as => 'admin', body => { $field => $good });
        if ($s eq 'COMPLETED' || $s eq 'CANCELLED') {
            api_error_is($r, 409, 'CONFLICT', "$action while $s: 409 CONFLICT");
            is(visit_row($v)->{$field}, $old, "$action while $s: unchanged");
            # the order of the answers: a bad assignee is a 400 even then
            bad_is(mutate($action, $v, as => 'admin', body => { $field => $ID{patient1} }), $field,
                   "$action of a patient while $s");
        } else {
            api_ok($r, "$action while $s: 200") or next;
            is($r->json->{data}{$field}, $good, "$action while $s: data.$field");
            is($r->json->{data}{$what}{id}, $good, "$action while $s: data.$what is the new one");
            is(visit_row($v)->{$field}, $good, "$action while $s: stored");
            is(visit_row($v)->{status}, $s, "$action while $s: the status is unchanged");
        }
    }
    my $v = new_visit(status => 'SCHEDULED');
    my @bad = (
        ['a patient',           $ID{patient1}],
        ['an admin',            $ID{admin}],
        [$what eq 'nurse' ? 'a doctor' : 'a nurse', $what eq 'nurse' ? $ID{doctor} : $ID{nurse2}],
        ["an inactive $what",   $inactive],
        ['a nonexistent user',  'cnosuchuser00000000000001'],
    );
    for my $b (@bad) {
        my $r = mutate($action, $v, as => 'admin', body => { $field => $b->[1] });
        bad_is($r, $field, "$action of $b->[0]");
    }
    bad_is(mutate($action, $v, as => 'admin', raw => $_->[1]), $field, "$action with $field $_->[0]")
        for ['malformed', qq({"$field":"bad id!"})], ['65 characters', qq({"$field":") . ('c' x 65) . '"}'],
            ['empty', qq({"$field":""})], ['missing', '{}'], ['null', qq({"$field":null})],
            ['a number', qq({"$field":5})];
    is(visit_row($v)->{$field}, $old, "$action: nothing refused changed the visit");
}
{
    # the replaced nurse loses the visit, the new one gains it
    my $v = new_visit(status => 'SCHEDULED');
    api_ok(response(GET => "/api/visits/$v", as => 'nurse1'), 'nurse1 sees her visit');
    api_ok(mutate('assign-nurse', $v, as => 'admin', body => { nurseId => $ID{nurse2} }), 'reassigned to nurse2');
    api_error_is(response(GET => "/api/visits/$v", as => 'nurse1'), 404, 'NOT_FOUND', 'nurse1 no longer sees it');
    api_ok(response(GET => "/api/visits/$v", as => 'nurse2'), 'nurse2 does');
    api_error_is(mutate('status', $v, as => 'nurse1', body => { status => 'EN_ROUTE' }), 404, 'NOT_FOUND',
                 'nurse1 can no longer move it');
    api_ok(mutate('status', $v, as => 'nurse2', body => { status => 'EN_ROUTE' }), 'nurse2 can');
    # a visit without a doctor gets one
    my $w = new_visit(status => 'SCHEDULED', doctor => undef);
    api_error_is(response(GET => "/api/visits/$w", as => 'doctor'), 404, 'NOT_FOUND', 'no doctor yet');
    my $r = mutate('assign-doctor', $w, as => 'admin', body => { doctorId => $ID{doctor} });
    api_ok($r, 'a doctor assigned to a visit without one');
    api_ok(response(GET => "/api/visits/$w", as => 'doctor'), '... who now sees it');
    is(psql_value(qq{SELECT metadata::text FROM audit_logs WHERE action = 'DOCTOR_ASSIGNED' AND "resourceId" = '$w'}),
       qq({"doctorId": "$ID{doctor}", "previousDoctorId": null}), '... audit metadata with previousDoctorId null');
}

done_ahava();
