# /api/messages events (SPEC §6, §8; README "Events") seen by a real Redis
# subscriber (PSUBSCRIBE ahava:user:*, a raw RESP client): NEW_MESSAGE to
# the recipient and to the sender's channel with the decrypted message,
# MESSAGES_READ to each sender, MESSAGE_DELETED to the recipient, nothing
# to anyone else; with Redis stopped the API still answers, the events wait
# in the outbox and arrive once Redis is back, once each and in order.
#
# One worker: nginx's Redis connection is a single ordered pipe, so the
# events of one step all arrive before those of the next (each step checks
# that nothing unexpected came in since the previous one).
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Messages;

setup(private_redis => 1);                      # stopped below; and no other file's events
start_messages_nginx();

my ($V1, $V3) = @ID{qw(visit1 visit3)};
my $TS = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

sub health { my $r = response(GET => '/health'); return ($r->json || {})->{redis} // '' }
ok(poll_until(10, sub { health() eq 'ok' }), "nginx's Redis connection is up (/health)");

my $sub = Ahava::Messages::Subscriber->new(redis_port());

# Runs $action, waits until $n events arrived (or 5 s), returns them.
sub step {
    my ($n, $action) = @_;
    my @stale = $sub->take;
    ok(!@stale, 'no unexpected event before this step')
        or diag(explain [map { [$_->{channel}, $_->{raw}] } @stale]);
    my $res = $action->();
    my @ev = $sub->wait_for(5, sub { @_ >= $n });
    $sub->take;
    return ($res, @ev);
}
sub by_user { my %h; push @{ $h{ $_->{user} } }, $_ for @_; \%h }
sub users_of { [sort map { $_->{user} } @_] }

# --- NEW_MESSAGE ----------------------------------------------------------------------
my $TEXT = "Running 10 minutes late \x{2014} sorry! \x{1F697}";
my ($r, @ev) = step(2, sub { send_message('nurse1', $V1, 'patient1', $TEXT) });
api_ok($r, 'nurse1 → patient1: 201', status => 201);
my $msg = data_of($r) || {};
is_deeply(users_of(@ev), [sort @ID{qw(nurse1 patient1)}],
          'NEW_MESSAGE on exactly two channels: the recipient and the sender (her other sessions)');
for my $e (@ev) {
    my $p = $e->{payload};
    is(ref $p eq 'HASH' ? $p->{type} : $e->{raw}, 'NEW_MESSAGE', "ahava:user:$e->{user}: type NEW_MESSAGE");
    is_deeply($p->{data}, $msg, "ahava:user:$e->{user}: data = the message as the 201 returned it");
    is($p->{data}{content}, $TEXT, "ahava:user:$e->{user}: content decrypted");
    like($p->{timestamp} // '', $TS, "ahava:user:$e->{user}: timestamp ISO-8601 UTC with ms");
    is_deeply([sort keys %$p], [qw(data timestamp type)], "ahava:user:$e->{user}: the frame is {type, data, timestamp}");
    unlike($e->{raw}, qr/"v2:|\bv2:[A-Za-z0-9+\/]/, "ahava:user:$e->{user}: no ciphertext in the event");
}

# the admin writes on a visit it is no participant of
($r, @ev) = step(2, sub { send_message('admin', $V3, 'nurse1', 'Admin here: please confirm the dressing stock.') });
api_ok($r, 'admin → nurse1 on visit 3: 201', status => 201);
is_deeply(users_of(@ev), [sort @ID{qw(admin nurse1)}], 'NEW_MESSAGE to nurse1 and to the admin (the sender)');
is_deeply($_->{payload}{data}, data_of($r), "... data on ahava:user:$_->{user} is the message") for @ev;

# a refused send publishes nothing (checked at the start of the next step)
api_error_is(send_message('patient2', $V1, 'nurse1', 'not my visit'), 404, 'NOT_FOUND', 'a refused send: 404');
api_error_is(send_message('nurse1', $V1, 'nurse2', 'not a participant'), 400, 'VALIDATION_ERROR', 'a refused recipient: 400');

# --- MESSAGES_READ ------------------------------------------------------------------------
my ($n1a, $n1b, $d1, $read1) = insert_messages(
    { visit => $V1, from => 'nurse1', to => 'patient1', content => 'nurse note a' },
    { visit => $V1, from => 'nurse1', to => 'patient1', content => 'nurse note b' },
    { visit => $V1, from => 'doctor', to => 'patient1', content => 'doctor note' },
    { visit => $V1, from => 'doctor', to => 'patient1', content => 'already read', read => 1 },
);
my ($p1_sent) = insert_messages({ visit => $V1, from => 'patient1', to => 'doctor', content => 'from patient1' });
my @marked = ($n1a, $n1b, $msg->{id}, $ID{message3}, $d1, $read1, $p1_sent);
($r, @ev) = step(3, sub { json_request(POST => '/api/messages/read', 'patient1', { messageIds => \@marked }) });
api_ok($r, 'patient1 marks 7 ids: 200');
is_deeply(data_of($r), { updated => 5 }, '... {updated: 5}');
{
    is(scalar @ev, 3, 'three MESSAGES_READ events: nurse1 (visit 1, visit 3), the doctor (visit 1)');
    my %got = map { my $d = $_->{payload}{data} || {};
                    ("$_->{user}|" . ($d->{visitId} // '')) =>
                        { %$d, messageIds => [sort @{ $d->{messageIds} || [] }] } } @ev;
    my %want = (
        "$ID{nurse1}|$V1" => { visitId => $V1, messageIds => [sort $n1a, $n1b, $msg->{id}], readBy => $ID{patient1} },
        "$ID{nurse1}|$V3" => { visitId => $V3, messageIds => [$ID{message3}], readBy => $ID{patient1} },
        "$ID{doctor}|$V1" => { visitId => $V1, messageIds => [$d1], readBy => $ID{patient1} },
    );
    is_deeply(\%got, \%want, 'each sender learns {visitId, messageIds, readBy} of its read messages');
    is(scalar(grep { ($_->{payload}{type} // '') eq 'MESSAGES_READ' } @ev), scalar @ev, '... all typed MESSAGES_READ');
    ok(!(grep { $_->{user} eq $ID{patient1} } @ev), '... nothing to the reader herself');
    ok(!(grep { grep { $_ eq $read1 || $_ eq $p1_sent } @{ $_->{payload}{data}{messageIds} || [] } } @ev),
       '... neither the already-read message nor her own sent one is in a receipt');
    like($_->{payload}{timestamp} // '', $TS, "... timestamp on ahava:user:$_->{user}") for @ev;
}

# nothing changes → no receipt (checked at the start of the next step)
is_deeply(data_of(json_request(POST => '/api/messages/read', 'patient1', { messageIds => [$n1a, $d1] })),
          { updated => 0 }, 'marking them again: {updated: 0}');
is_deeply(data_of(json_request(POST => '/api/messages/read', 'nurse1', { messageIds => [$p1_sent] })),
          { updated => 0 }, "nurse1 marking a message addressed to the doctor: {updated: 0}");

# --- MESSAGE_DELETED -------------------------------------------------------------------------
api_error_is(response(DELETE => "/api/messages/$n1a", as => 'patient1'), 403, 'FORBIDDEN',
             'the recipient may not delete: 403 (and no event)');
($r, @ev) = step(1, sub { response(DELETE => "/api/messages/$msg->{id}", as => 'nurse1') });
api_ok($r, 'nurse1 deletes her message: 200');
is_deeply(users_of(@ev), [$ID{patient1}], 'MESSAGE_DELETED to the recipient only');
is(($ev[0]{payload} || {})->{type}, 'MESSAGE_DELETED', '... type MESSAGE_DELETED');
is_deeply(($ev[0]{payload} || {})->{data}, { messageId => $msg->{id}, visitId => $V1 }, '... data {messageId, visitId}');

# --- a last event: nothing unexpected arrived since the previous step --------------------------
($r, @ev) = step(2, sub { send_message('doctor', $V1, 'nurse1', 'barrier') });
is_deeply(users_of(@ev), [sort @ID{qw(doctor nurse1)}], 'the doctor → nurse1: NEW_MESSAGE to both, nothing else');
ok(!(grep { ($_->{payload}{data}{content} // '') ne 'barrier' } @ev), '... and only that message');

# --- Redis stopped -----------------------------------------------------------------------------
$sub->disconnect;
my @down;
my $redis = Ahava::Test::redis();
ok($redis->stop, 'the private Redis is stopped');
{
    my $r1 = send_message('nurse1', $V1, 'patient1', 'sent the moment Redis went away');
    api_ok($r1, 'POST right after the stop: still 201', status => 201);
    {
        ok(poll_until(5, sub { health() eq 'down' }), '/health notices Redis is down');
    }
    my $r2 = send_message('patient1', $V1, 'nurse1', 'sent while Redis is down');
    api_ok($r2, 'POST with Redis down: 201', status => 201);
    is((data_of($r2) || {})->{content}, 'sent while Redis is down', '... with the message');
    ok(defined message_row((data_of($r2) || {})->{id} // 'x'), '... stored');
    my $rr = json_request(POST => '/api/messages/read', 'nurse1', { messageIds => [(data_of($r2) || {})->{id}] });
    api_ok($rr, 'mark read with Redis down: 200');
    is_deeply(data_of($rr), { updated => 1 }, '... {updated: 1}');
    api_ok(response(DELETE => '/api/messages/' . (data_of($r1) || {})->{id}, as => 'nurse1'),
           'DELETE with Redis down: 200');
    api_ok(response(GET => "/api/messages/visit/$V1", as => 'patient1'), 'GET with Redis down: 200');
    api_ok(response(GET => '/api/messages/unread/count', as => 'patient1'), 'unread count with Redis down: 200');
    error_log_like(qr/events and jobs wait in PostgreSQL/, 'the wait is logged');
    is(psql_value(q{SELECT count(*) FROM ahava_outbox WHERE topic IS NOT NULL}), 4,
       '... and the four events wait in the outbox');
    @down = map { (data_of($_) || {})->{id} } $r1, $r2;
}

# --- Redis back: what waited arrives, once and in order, then events flow again -----------
ok($redis->start, 'Redis started again on the same port');
$sub = Ahava::Messages::Subscriber->new(redis_port());     # before nginx is back
{
    ok(poll_until(10, sub { $redis->clients >= 2 }), 'nginx reconnects to the restarted Redis');
    my @late = $sub->wait_for(10, sub { @_ >= 6 });
    $sub->take;
    my %seq;
    push @{ $seq{ $_->{user} } }, join(' ', ($_->{payload}{type} // '?'),
        $_->{payload}{data}{id} // $_->{payload}{data}{messageId} // join(',', @{ $_->{payload}{data}{messageIds} || [] }))
        for @late;
    is_deeply(\%seq, {
        $ID{patient1} => ["NEW_MESSAGE $down[0]", "NEW_MESSAGE $down[1]", "MESSAGES_READ $down[1]", "MESSAGE_DELETED $down[0]"],
        $ID{nurse1}   => ["NEW_MESSAGE $down[0]", "NEW_MESSAGE $down[1]"],
    }, 'the six events committed while Redis was down arrive once each, in commit order, on the right channels')
        or diag(explain \%seq);
    my ($late_msg) = grep { ($_->{payload}{data}{id} // '') eq $down[1] } @late;
    is(($late_msg->{payload}{data} || {})->{content}, 'sent while Redis is down', '... a late NEW_MESSAGE carries the decrypted message');
    ok(poll_until(5, sub { psql_value('SELECT count(*) FROM ahava_outbox') == 0 }), '... and the outbox is empty');
}
($r, @ev) = step(2, sub { send_message('nurse1', $V1, 'patient1', 'Redis is back') });
api_ok($r, 'POST after the restart: 201', status => 201);
{
    is_deeply(users_of(@ev), [sort @ID{qw(nurse1 patient1)}], 'NEW_MESSAGE delivered again to both channels');
    is(($ev[0]{payload}{data} || {})->{content}, 'Redis is back', '... with the message');
}
$sub->disconnect;

done_ahava();
