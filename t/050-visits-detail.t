# GET /api/visits/:id (SPEC §5, §3, §10): the full detail for participants
# and admins (participants, payments, GPS history, the nurse report and the
# latest 50 messages decrypted), 404 alike for "not yours" and "not there",
# malformed ids, tampered ciphertext (that field null + DECRYPTION_FAILED,
# the rest intact), and values written by Node's crypto (v2 and legacy hex).
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
my $REPORT = qr/^Patient alert and comfortable\. Wound on the left shin/;

sub detail { response(GET => "/api/visits/$_[1]", as => $_[0]) }
sub data   { my $j = $_[0]->json; ref $j eq 'HASH' && ref $j->{data} eq 'HASH' ? $j->{data} : {} }
sub msg_ids { [ map { $_->{id} } @{ $_[0]{messages} || [] } ] }

my %USER = map { $_->[0] => { id => $_->[0], firstName => $_->[1], lastName => $_->[2] } }
           @{ psql(q{SELECT id, "firstName", "lastName" FROM users}) };

# --- visit 4 (COMPLETED, nurse report, 2 messages, a payment) --------------------
for my $who (qw(patient2 nurse1 doctor admin)) {
    my $r = detail($who, $V{4});
    api_ok($r, "visit 4 as $who: 200") or next;
    my $d = data($r);
    is($d->{id}, $V{4}, "visit 4 as $who: the visit");
    is_deeply($d->{patient}, $USER{ $ID{patient2} }, "visit 4 as $who: patient {id, firstName, lastName}");
    is_deeply($d->{nurse},   $USER{ $ID{nurse1} },   "visit 4 as $who: nurse");
    is_deeply($d->{doctor},  $USER{ $ID{doctor} },   "visit 4 as $who: doctor");
    like($d->{nurseReport} // '', $REPORT, "visit 4 as $who: nurseReport decrypted");
    ok(!exists $d->{nurseReportError}, "visit 4 as $who: no nurseReportError");
    is_deeply(msg_ids($d), [$ID{message4}, $ID{message5}], "visit 4 as $who: messages 4, 5 (oldest first)");
}
{
    my $d = data(detail('admin', $V{4}));
    is($d->{status}, 'COMPLETED', 'status COMPLETED');
    ok(exists $d->{$_}, "the detail has $_") for qw(doctorReview doctorRating gpsCoordinates payments messages nurseReport);
    like($d->{$_} // '', $TS, "$_ is ISO-8601 UTC with milliseconds")
        for qw(scheduledStart actualStart actualEnd createdAt updatedAt);

    my $gps = $d->{gpsCoordinates};
    is(ref $gps eq 'ARRAY' ? scalar @$gps : -1, 3, 'gpsCoordinates: 3 points');
    my @want = ([-26.1960, 28.0340], [-26.1905, 28.0300], [-26.1880, 28.0290]);
    for my $i (0 .. 2) {
        my $p = $gps->[$i] || {};
        ok(abs(($p->{lat} // 0) - $want[$i][0]) < 1e-9 && abs(($p->{lng} // 0) - $want[$i][1]) < 1e-9,
           "gps point $i: lat/lng") or diag(explain $p);
        like($p->{timestamp} // '', $TS, "gps point $i: ISO timestamp");
    }

    my $pay = $d->{payments};
    is(ref $pay eq 'ARRAY' ? scalar @$pay : -1, 1, 'payments: one');
    my $p = ref $pay eq 'ARRAY' ? $pay->[0] || {} : {};
    is($p->{id}, 'cdemopayment0000000000001', 'payment id');
    is($p->{amountInCents}, 65000, 'payment amountInCents');
    is($p->{currency}, 'ZAR', 'payment currency');
    is($p->{status}, 'COMPLETED', 'payment status');
    is($p->{paystackReference}, 'demo_paystack_ref_0001', 'payment paystackReference');
    like($p->{createdAt} // '', $TS, 'payment createdAt');

    my ($m4, $m5) = @{ $d->{messages} };
    is($m4->{content}, 'Visit done; BP 128/82, report attached to the visit.', 'message 4 decrypted');
    is($m5->{content}, 'Thanks Lerato, reviewed. Ngiyabonga!', 'message 5 decrypted');
    is($m4->{senderId}, $ID{nurse1}, 'message 4 senderId');
    is($m4->{recipientId}, $ID{doctor}, 'message 4 recipientId');
    is($m4->{type}, 'TEXT', 'message 4 type');
    ok(JSON::PP::is_bool($m4->{isRead}) && !$m4->{isRead}, 'message 4 isRead false');
    like($m4->{createdAt} // '', $TS, 'message createdAt ISO');
    ok(!exists $m4->{contentError}, 'no contentError on a good message');
}

# --- visit 3 (no doctor, 3 messages) ------------------------------------------------
for my $who (qw(patient1 nurse1 admin)) {
    my $r = detail($who, $V{3});
    api_ok($r, "visit 3 as $who: 200") or next;
    my $d = data($r);
    ok(exists $d->{doctor} && !defined $d->{doctor}, "visit 3 as $who: doctor null");
    is_deeply(msg_ids($d), [@ID{qw(message1 message2 message3)}], "visit 3 as $who: messages 1, 2, 3");
    is($d->{messages}[2]{content}, "Arrived \x{2014} starting the wound dressing now.",
       "visit 3 as $who: UTF-8 content decrypted");
    ok(exists $d->{nurseReport} && !defined $d->{nurseReport}, "visit 3 as $who: nurseReport null (none)");
    ok(!exists $d->{nurseReportError}, "visit 3 as $who: no nurseReportError for an absent report");
}

# --- who may not see it: 404, exactly like a visit that does not exist -----------------
my $absent = detail('admin', 'cnosuchvisit0000000000001');
api_error_is($absent, 404, 'NOT_FOUND', 'a nonexistent id: 404 NOT_FOUND');
for my $case (['patient1', 2], ['patient1', 4], ['patient2', 3], ['nurse2', 4],
              ['nurse1', 2], ['doctor', 3])
{
    my ($who, $n) = @$case;
    my $r = detail($who, $V{$n});
    api_error_is($r, 404, 'NOT_FOUND', "visit $n as $who (not a participant): 404 NOT_FOUND");
    is($r->raw, $absent->raw, "visit $n as $who: the same body as a nonexistent visit");
}

# --- malformed ids -----------------------------------------------------------------------------
for my $id ('bad.id', 'c' x 65, 'a%20b', '%C3%A9t%C3%A9', "x'or'1'='1", '..', 'a%2Fb') {
    my $r = detail('admin', $id);
    api_error_is($r, 404, 'NOT_FOUND', "malformed id '$id': 404 NOT_FOUND");
}
api_error_is(detail('admin', 'c' x 64), 404, 'NOT_FOUND', 'a well-formed 64-character id that is not there: 404');
api_ok(detail('admin', "$V{4}/"), 'a trailing slash is the same visit');

# --- tampered ciphertext ---------------------------------------------------------------------
sub flip_last_char {                   # alter the ciphertext part (base64 or hex)
    my ($ct) = @_;
    my $c = substr($ct, -6, 1);
    substr($ct, -6, 1) = $c eq 'A' ? 'B' : $c eq 'a' ? 'b' : $c eq '0' ? '1' : 'A';
    return $ct;
}
sub set_content { psql(qq{UPDATE messages SET content = '$_[1]' WHERE id = '$_[0]'}) }
sub set_report  { psql(qq{UPDATE visits SET "nurseReport" = } . (defined $_[1] ? "'$_[1]'" : 'NULL') . qq{ WHERE id = '$_[0]'}) }

my $orig2 = psql_value(qq{SELECT content FROM messages WHERE id = '$ID{message2}'});
my $orig_report = psql_value(qq{SELECT "nurseReport" FROM visits WHERE id = '$V{4}'});
like($orig2, qr/^v2:/, 'the seeded ciphertext is in the v2 format');

set_content($ID{message2}, flip_last_char($orig2));
{
    my $r = detail('nurse1', $V{3});
    api_ok($r, 'a tampered message: still 200');
    my @m = @{ data($r)->{messages} || [] };
    is(scalar @m, 3, '... all three messages are there');
    ok(exists $m[1]{content} && !defined $m[1]{content}, '... the tampered one has content null')
        or diag(explain $m[1]);
    is($m[1]{contentError}, 'DECRYPTION_FAILED', '... and "contentError":"DECRYPTION_FAILED"');
    is($m[0]{content}, 'I am on my way, about 20 minutes out.', '... the one before is intact');
    like($m[2]{content} // '', qr/^Arrived/, '... the one after is intact');
    ok(!exists $m[0]{contentError} && !exists $m[2]{contentError}, '... without contentError');
    is($m[1]{id}, $ID{message2}, '... the rest of the tampered message is there (id)');
    is($m[1]{senderId}, $ID{patient1}, '... (senderId)');
}
for my $bad (['not ciphertext', 'hello world'], ['empty', ''], ['v2 with junk', 'v2:!!:??:**'],
             ['truncated', substr($orig2, 0, 20)])
{
    set_content($ID{message2}, $bad->[1]);
    my $r = detail('nurse1', $V{3});
    api_ok($r, "message content $bad->[0]: 200");
    my $m = (data($r)->{messages} || [])->[1] || {};
    ok(!defined $m->{content} && ($m->{contentError} // '') eq 'DECRYPTION_FAILED',
       "message content $bad->[0]: null + DECRYPTION_FAILED") or diag(explain $m);
}
set_content($ID{message2}, $orig2);
is(data(detail('nurse1', $V{3}))->{messages}[1]{content}, 'Thank you! The gate code is 4512.',
   'the restored message decrypts again');

set_report($V{4}, flip_last_char($orig_report));
{
    my $r = detail('doctor', $V{4});
    api_ok($r, 'a tampered nurse report: still 200');
    my $d = data($r);
    ok(exists $d->{nurseReport} && !defined $d->{nurseReport}, '... nurseReport null');
    is($d->{nurseReportError}, 'DECRYPTION_FAILED', '... "nurseReportError":"DECRYPTION_FAILED"');
    is_deeply(msg_ids($d), [$ID{message4}, $ID{message5}], '... the messages are intact');
    is($d->{messages}[0]{content}, 'Visit done; BP 128/82, report attached to the visit.',
       '... and still decrypted');
    is(scalar @{ $d->{payments} || [] }, 1, '... the payments are intact');
}
{
    # under another key: authentication fails just the same
    my ($other) = node_encrypt(['a report under another key'],
                               key => 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=');
    set_report($V{4}, $other);
    my $d = data(detail('doctor', $V{4}));
    ok(!defined $d->{nurseReport} && ($d->{nurseReportError} // '') eq 'DECRYPTION_FAILED',
       'a report under another key: null + DECRYPTION_FAILED');
}
error_log_like(qr/decryption of "content" failed/, 'the failed message decryption is logged');
error_log_like(qr/decryption of "nurseReport" failed/, 'the failed report decryption is logged');

# --- written by Node's crypto (the Node app) -----------------------------------------------------
{
    my $text = "Node wrote this report \x{2014} caf\x{e9}, \x{1F48A}, line two:\na:b:c";
    my ($v2) = node_encrypt([$text]);
    like($v2, qr/^v2:[A-Za-z0-9+\/=]+:[A-Za-z0-9+\/=]+:[A-Za-z0-9+\/=]+$/, 'Node wrote v2:<iv>:<tag>:<ct>');
    set_report($V{4}, $v2);
    my $d = data(detail('nurse1', $V{4}));
    is($d->{nurseReport}, $text, 'a nurse report encrypted by Node (v2) is returned decrypted');
    ok(!exists $d->{nurseReportError}, '... without nurseReportError');

    my ($hex) = node_encrypt(['A legacy report, hex encoded.'], format => 'hex');
    like($hex, qr/^[0-9a-f]{24}:[0-9a-f]{32}:[0-9a-f]+$/, 'Node wrote the legacy <iv hex>:<tag hex>:<ct hex>');
    set_report($V{4}, $hex);
    is(data(detail('nurse1', $V{4}))->{nurseReport}, 'A legacy report, hex encoded.',
       'a legacy hex nurse report is returned decrypted');

    my ($mv2, $mhex) = (node_encrypt(['message from Node, v2']),
                        node_encrypt(['message from Node, hex'], format => 'hex'));
    set_content($ID{message4}, $mv2);
    set_content($ID{message5}, $mhex);
    my @m = @{ data(detail('doctor', $V{4}))->{messages} || [] };
    is($m[0]{content}, 'message from Node, v2', 'a message encrypted by Node (v2) is decrypted');
    is($m[1]{content}, 'message from Node, hex', 'a legacy hex message is decrypted');
    set_report($V{4}, $orig_report);
    like(data(detail('nurse1', $V{4}))->{nurseReport} // '', $REPORT, 'the original report is back');
}

# --- the latest 50 messages ------------------------------------------------------------------------
{
    my @texts = map { sprintf('bulk message %02d', $_) } 1 .. 60;
    my @ct = node_encrypt(\@texts);
    my $sql = join ",\n", map {
        my $i = $_ + 1;
        sprintf(q{('ctestbulk%016d', '%s', '%s', '%s', 'TEXT', '%s', false,
                   TIMESTAMP '2026-01-01 00:00:00' + interval '%d minutes',
                   TIMESTAMP '2026-01-01 00:00:00' + interval '%d minutes')},
                $i, $V{1}, $i % 2 ? $ID{patient1} : $ID{nurse1},
                $i % 2 ? $ID{nurse1} : $ID{patient1}, $ct[$_], $i, $i)
    } 0 .. 59;
    psql(qq{INSERT INTO messages (id, "visitId", "senderId", "recipientId", type, content,
            "isRead", "createdAt", "updatedAt") VALUES $sql});
    is(psql_value(qq{SELECT count(*) FROM messages WHERE "visitId" = '$V{1}'}), 60, '60 messages on visit 1');

    my $d = data(detail('patient1', $V{1}));
    my @m = @{ $d->{messages} || [] };
    is(scalar @m, 50, 'exactly 50 messages returned');
    is_deeply([map { $_->{content} } @m], [@texts[10 .. 59]],
              'the newest 50 (11..60), oldest first, all decrypted');
    my @times = map { $_->{createdAt} } @m;
    is_deeply(\@times, [sort @times], 'ordered by createdAt ascending');
}

done_ahava();
