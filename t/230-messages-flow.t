# A conversation through /api/messages (SPEC §6, §11): pagination oldest →
# newest with meta.total, unreadOnly, the unread count per visit, read
# receipts that touch only the caller's received messages, the participants
# of a visit, and deletion (gone from the list, audited; a non-sender's
# attempt is a 403 that is audited as ACCESS_DENIED).
use strict;
use warnings;
use Test::More;
use Digest::SHA qw(sha256_hex);
use Encode ();
use Ahava::Test;
use Ahava::Messages;

setup();
start_messages_nginx();

my ($V1, $V2, $V3, $V5) = @ID{qw(visit1 visit2 visit3 visit5)};
my $TS = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

# --- 25 messages on visit 1 (no seeded ones), ids in the reverse of time order ---------
# sender/recipient rotate over the three participants; every fourth one is read
my @who = qw(patient1 nurse1 doctor);
my @M;
for my $i (1 .. 25) {
    my $from = $who[$i % 3];
    my $to   = $who[($i + 1 + ($i % 2)) % 3];          # never the sender
    push @M, { id => sprintf('cflow%020d', 100 - $i), visit => $V1, from => $from, to => $to,
               content => sprintf("flow message %02d \x{2014} %s to %s", $i, $from, $to),
               read => $i % 4 == 0,
               at => sprintf(q{TIMESTAMP '2026-01-01 08:00:00' + interval '%d minutes'}, $i) };
}
# two unread ones for patient1 on visit 5 (nurse2's visit)
my @V5 = map { { visit => $V5, from => 'nurse2', to => 'patient1', content => "visit 5 note $_" } } 1 .. 2;
insert_messages(@M, @V5);
is(psql_value(qq{SELECT count(*) FROM messages WHERE "visitId" = '$V1'}), 25, '25 messages on visit 1');
ok((grep { $_->{to} eq 'patient1' && !$_->{read} } @M) >= 3, 'some unread ones for patient1 among them');
ok((grep { $_->{to} eq 'patient1' && $_->{read} } @M) >= 1, '... some read ones');
ok((grep { $_->{from} eq 'patient1' && !$_->{read} } @M) >= 1, '... some unread ones she sent');
ok((grep { $_->{from} ne 'patient1' && $_->{to} ne 'patient1' && !$_->{read} } @M) >= 1,
   '... and unread ones between the others');

sub page {
    my ($as, $visit, $q) = @_;
    my $r = response(GET => "/api/messages/visit/$visit?$q", as => $as);
    return ($r, data_of($r) || [], ($r->json || {})->{meta} || {});
}

# --- pagination ------------------------------------------------------------------------------
{
    my (@all, @sizes);
    for my $offset (0, 10, 20) {
        my ($r, $d, $meta) = page('nurse1', $V1, "limit=10&offset=$offset");
        api_ok($r, "page limit=10 offset=$offset: 200");
        is_deeply($meta, { limit => 10, offset => $offset, total => 25 }, "... meta {limit 10, offset $offset, total 25}");
        push @sizes, scalar @$d;
        push @all, @$d;
    }
    is_deeply(\@sizes, [10, 10, 5], 'pages of 10, 10 and 5');
    is_deeply([map { $_->{id} } @all], [map { $_->{id} } @M], 'oldest → newest by createdAt (not by id), no gap, no repeat');
    is_deeply([map { $_->{content} } @all], [map { $_->{content} } @M], 'every content decrypted');
    is_deeply([map { $_->{isRead} ? 1 : 0 } @all], [map { $_->{read} ? 1 : 0 } @M], 'isRead as stored');
    is(scalar(grep { ($_->{createdAt} // '') =~ $TS } @all), 25, 'createdAt ISO-8601 UTC with milliseconds');
    is($all[0]{createdAt}, '2026-01-01T08:01:00.000Z', '... the first one at 08:01');
    my @keys = sort keys %{ $all[0] };
    is_deeply(\@keys, [sort qw(id visitId senderId recipientId type content isRead attachmentUrl
                               attachmentType createdAt updatedAt)], 'a message has the Prisma fields');

    my ($r, $d, $meta) = page('nurse1', $V1, 'offset=30');
    api_ok($r, 'offset past the end: 200');
    is_deeply([scalar @$d, $meta->{total}], [0, 25], '... no items, total still 25');
    ($r, $d, $meta) = page('doctor', $V1, '');
    is_deeply([scalar @$d, $meta->{limit}, $meta->{offset}], [20, 20, 0], 'no limit: 20 items (default), offset 0');
    ($r, $d) = page('admin', $V1, 'limit=3&offset=22');
    is_deeply([map { $_->{id} } @$d], [map { $_->{id} } @M[22 .. 24]], 'admin: limit=3 offset=22 → the last three');
}

# --- unreadOnly -------------------------------------------------------------------------------
for my $as (qw(patient1 nurse1 doctor admin)) {
    my @want = map { $_->{id} } grep { $_->{to} eq $as && !$_->{read} } @M;
    my ($r, $d, $meta) = page($as, $V1, 'unreadOnly=true&limit=100');
    api_ok($r, "unreadOnly=true as $as: 200");
    is_deeply([map { $_->{id} } @$d], \@want, "... only the unread ones addressed to $as (" . @want . '), oldest first');
    is($meta->{total}, scalar @want, '... meta.total counts only those');
    ok(!(grep { $_->{recipientId} ne uid($as) || $_->{isRead} } @$d), '... none read, none to someone else');
}
{
    my @want = map { $_->{id} } grep { $_->{to} eq 'patient1' && !$_->{read} } @M;
    my ($r, $d, $meta) = page('patient1', $V1, 'unreadOnly=true&limit=2&offset=1');
    is_deeply([map { $_->{id} } @$d], [@want[1, 2]], 'unreadOnly=true&limit=2&offset=1 pages within the unread ones');
    is($meta->{total}, scalar @want, '... total still the unread ones');
    ($r, $d, $meta) = page('patient1', $V1, 'unreadOnly=false&limit=100');
    is($meta->{total}, 25, 'unreadOnly=false: every message');
}

# --- unread count -----------------------------------------------------------------------------
sub unread {
    my ($as) = @_;
    my $r = response(GET => '/api/messages/unread/count', as => $as);
    api_ok($r, "unread count as $as: 200");
    return data_of($r) || {};
}
sub expected_unread {                  # the database's own answer, an independent oracle
    my ($as) = @_;
    my %by = map { @$_ } @{ psql(qq{SELECT "visitId", count(*) FROM messages
        WHERE "recipientId" = '} . uid($as) . q{' AND NOT "isRead" GROUP BY 1}) };
    my $n = 0; $n += $_ for values %by;
    return { count => $n, byVisit => \%by };
}
my $p1_v1_unread = grep { $_->{to} eq 'patient1' && !$_->{read} } @M;
{
    my $u = unread('patient1');
    is_deeply($u, { count => $p1_v1_unread + 1 + 2,
                    byVisit => { $V1 => $p1_v1_unread, $V3 => 1, $V5 => 2 } },
              "patient1: count = $p1_v1_unread (visit 1) + 1 (seeded, visit 3) + 2 (visit 5), byVisit per visit");
    is_deeply($u, expected_unread('patient1'), '... as the database counts them');
    is_deeply(unread('admin'), { count => 0, byVisit => {} }, 'admin (receives nothing): {count 0, byVisit {}}');
    is_deeply(unread('nurse2'), expected_unread('nurse2'), 'nurse2: as the database counts');
    is_deeply(unread('doctor'), expected_unread('doctor'), 'doctor: as the database counts');
}

# --- mark read ---------------------------------------------------------------------------------
{
    my @p1_unread = grep { $_->{to} eq 'patient1' && !$_->{read} } @M;
    my ($p1_read)   = grep { $_->{to} eq 'patient1' && $_->{read} } @M;
    my ($p1_sent)   = grep { $_->{from} eq 'patient1' && !$_->{read} } @M;
    my ($others)    = grep { $_->{from} ne 'patient1' && $_->{to} ne 'patient1' && !$_->{read} } @M;
    my @ids = ($p1_unread[0]{id}, $p1_unread[1]{id}, $ID{message3}, $p1_read->{id}, $p1_sent->{id},
               $others->{id}, $ID{message6}, 'cnosuchmessage00000000001');
    my %before = map { $_ => message_row($_) } @ids;
    my $count_before = unread('patient1')->{count};
    my $doctor_before = unread('doctor');

    my $r = json_request(POST => '/api/messages/read', 'patient1', { messageIds => \@ids });
    api_ok($r, 'patient1 marks 8 ids (3 of them unread and addressed to her): 200');
    is_deeply(data_of($r), { updated => 3 }, '... {updated: 3}');

    for my $id (@ids[0 .. 2]) {
        my $row = message_row($id);
        is($row->{isRead}, 'true', "$id (patient1's, unread): now read");
        isnt($row->{updatedAt}, $before{$id}{updatedAt}, '... updatedAt moved');
        is_deeply([@$row{qw(content senderId recipientId createdAt)}],
                  [@{ $before{$id} }{qw(content senderId recipientId createdAt)}], '... nothing else changed');
    }
    for my $case ([$ids[3], 'already read'], [$ids[4], 'sent by patient1'], [$ids[5], 'between nurse1 and the doctor'],
                  [$ids[6], "another patient's"], [$ids[7], 'nonexistent'])
    {
        is_deeply(message_row($case->[0]), $before{ $case->[0] }, "$case->[1]: the row is unchanged");
    }
    my $u = unread('patient1');
    is($u->{count}, $count_before - 3, 'patient1 unread count dropped by 3');
    is_deeply($u, expected_unread('patient1'), '... as the database counts');
    ok(!exists $u->{byVisit}{$V3}, '... visit 3 (no unread left) is gone from byVisit');
    is($u->{byVisit}{$V1}, $p1_v1_unread - 2, '... visit 1 down by 2');
    is_deeply(unread('doctor'), $doctor_before, "the doctor's count is untouched");

    # someone else's message only: nothing happens
    my $other_before = message_row($others->{id});
    $r = json_request(POST => '/api/messages/read', 'patient1', { messageIds => [$others->{id}] });
    api_ok($r, "patient1 marks only a message between nurse1 and the doctor: 200");
    is_deeply(data_of($r), { updated => 0 }, '... {updated: 0}');
    is_deeply(message_row($others->{id}), $other_before, '... the row is unchanged (isRead, updatedAt)');

    $r = json_request(POST => '/api/messages/read', 'patient1', { messageIds => [@ids[0 .. 2]] });
    is_deeply(data_of($r), { updated => 0 }, 'marking the same ones again: {updated: 0}');

    my ($res, $d) = page('patient1', $V1, 'unreadOnly=true&limit=100');
    ok(!(grep { $_->{id} eq $ids[0] || $_->{id} eq $ids[1] } @$d), 'the marked ones left unreadOnly');
}

# --- participants ---------------------------------------------------------------------------
my %USER = map { $_->[0] => { id => $_->[0], firstName => $_->[1], lastName => $_->[2], role => $_->[3] } }
           @{ psql(q{SELECT id, "firstName", "lastName", role::text FROM users}) };
for my $case ([$V1, [qw(patient1 nurse1 doctor)], 'patient1'], [$V3, [qw(patient1 nurse1)], 'nurse1'],
              [$V2, [qw(patient2 nurse2 doctor)], 'doctor'], [$V3, [qw(patient1 nurse1)], 'admin'])
{
    my ($visit, $people, $as) = @$case;
    my $r = response(GET => "/api/messages/visit/$visit/participants", as => $as);
    api_ok($r, "participants of $visit as $as: 200");
    my $d = data_of($r) || [];
    is_deeply([sort { $a->{id} cmp $b->{id} } @$d], [sort { $a->{id} cmp $b->{id} } map { $USER{ $ID{$_} } } @$people],
              "... exactly {id, firstName, lastName, role} of " . join(', ', @$people));
}
{
    my $d = data_of(response(GET => "/api/messages/visit/$V3/participants", as => 'patient1')) || [];
    ok(!(grep { $_->{role} eq 'DOCTOR' } @$d), 'visit 3 (no doctor): no doctor, no null entry');
    is(scalar @$d, 2, '... two participants');
    my ($zoe) = grep { $_->{id} eq $ID{patient2} } @{ data_of(response(GET => "/api/messages/visit/$V2/participants",
                                                                         as => 'nurse2')) || [] };
    is($zoe->{firstName}, "Zo\x{eb}", 'a non-ASCII first name comes back intact');
}

# --- delete --------------------------------------------------------------------------------------
sub audit_rows {
    my ($where) = @_;
    return [ map { my %h; @h{qw(id userId userRole action resource resourceId metadata createdAt checksum)} = @$_; \%h }
             @{ psql(qq{SELECT id, "userId", "userRole"::text, action, resource, "resourceId", metadata::text,
                 to_char("createdAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), checksum FROM audit_logs WHERE $where
                 ORDER BY "createdAt", id}) } ];
}
sub checksum_ok {
    my ($a) = @_;
    my $line = join '|', map { $_ // '' } @$a{qw(id userId userRole action resource resourceId metadata createdAt)};
    return sha256_hex(Encode::encode('UTF-8', $line)) eq ($a->{checksum} // '');
}
{
    my $unread_before = unread('patient1')->{count};
    my $r = send_message('nurse1', $V1, 'patient1', 'this one will be deleted');
    api_ok($r, 'nurse1 sends a message to patient1: 201', status => 201);
    my $id = data_of($r)->{id};
    is(unread('patient1')->{count}, $unread_before + 1, "patient1's unread count went up by one");
    my ($res, $d, $meta) = page('patient1', $V1, 'limit=100');
    ok((grep { $_->{id} eq $id } @$d), 'it is listed');
    my $total = $meta->{total};

    # not the sender: 403, audited
    $r = response(DELETE => "/api/messages/$id", as => 'patient1');
    api_error_is($r, 403, 'FORBIDDEN', 'the recipient deletes it: 403 FORBIDDEN');
    ok(defined message_row($id), '... the row is still there');
    api_error_is(response(DELETE => "/api/messages/$id", as => 'admin'), 403, 'FORBIDDEN',
                 'an admin (who did not send it): 403 FORBIDDEN');
    my $denied = poll_until(5, sub { my $a = audit_rows(qq{action = 'ACCESS_DENIED' AND "resourceId" = '$id'});
                                     @$a >= 2 ? $a : undef }) || [];
    is(scalar @$denied, 2, 'audit_logs: two ACCESS_DENIED rows for the message');
    my ($by_patient) = grep { ($_->{userId} // '') eq $ID{patient1} } @$denied;
    is_deeply([@{ $by_patient || {} }{qw(userRole resource resourceId)}], ['PATIENT', 'message', $id],
              '... one by patient1 (PATIENT) on message <id>');
    ok((grep { ($_->{userId} // '') eq $ID{admin} && $_->{userRole} eq 'ADMIN' } @$denied), '... one by the admin');
    {
        ok(checksum_ok($_), "... checksum = sha256(id|userId|userRole|action|resource|resourceId|metadata|createdAt)")
            for @$denied;
    }
    error_log_like(qr/security event ACCESS_DENIED on message "\Q$id\E" by user "\Q$ID{patient1}\E"/,
                   'the denial is in the error log');

    # the sender: 200, gone, audited in the same statement
    $r = response(DELETE => "/api/messages/$id", as => 'nurse1');
    api_ok($r, 'the sender deletes it: 200');
    is_deeply(data_of($r), { id => $id, visitId => $V1, deleted => JSON::PP::true }, '... {id, visitId, deleted: true}');
    ok(!defined message_row($id), '... the row is gone');
    ($res, $d, $meta) = page('patient1', $V1, 'limit=100');
    ok(!(grep { $_->{id} eq $id } @$d), 'GET no longer lists it');
    is($meta->{total}, $total - 1, '... meta.total dropped by one');
    is(unread('patient1')->{count}, $unread_before, "patient1's unread count is back");
    my $deleted = audit_rows(qq{action = 'MESSAGE_DELETED' AND "resourceId" = '$id'});
    is(scalar @$deleted, 1, 'audit_logs: one MESSAGE_DELETED row (committed with the delete)');
    my $a = $deleted->[0] || {};
    is_deeply([@$a{qw(userId userRole resource resourceId)}], [$ID{nurse1}, 'NURSE', 'message', $id],
              '... by nurse1 (NURSE) on message <id>');
    is_deeply(JSON::PP->new->decode($a->{metadata} // 'null'), { visitId => $V1, recipientId => $ID{patient1} },
              '... metadata {visitId, recipientId}, no content');
    ok(checksum_ok($a), '... checksum verified');
    error_log_like(qr/security event MESSAGE_DELETED on message "\Q$id\E" by user "\Q$ID{nurse1}\E"/,
                   'the deletion is in the error log');
    error_log_unlike(qr/this one will be deleted/, 'the error log holds no message content');

    api_error_is(response(DELETE => "/api/messages/$id", as => 'nurse1'), 404, 'NOT_FOUND', 'deleting it again: 404');
    is(scalar @{ audit_rows(qq{action = 'MESSAGE_DELETED' AND "resourceId" = '$id'}) }, 1, '... no second audit row');

    # the page the others see closes the gap
    my ($r2, $d2) = page('nurse1', $V1, 'limit=10&offset=20');
    is_deeply([map { $_->{id} } @$d2], [map { $_->{id} } @M[20 .. 24]], 'the last page is the last five again');
}

done_ahava();
