# /api/messages authorization (SPEC §3, §6): every endpoint × every kind of
# caller — PATIENT, NURSE, DOCTOR as a participant of the visit and as a
# non-participant, and ADMIN (a participant of no visit) — from one table.
#
# Participants: visit 1 (patient1, nurse1, doctor).  Non-participants:
# patient2, nurse2 and the doctor on visit 3 (patient1, nurse1, no doctor);
# the admin acts on visit 3 too.  A visit the caller may not see is a 404
# identical to a visit that does not exist; deleting a message one can see
# but did not send is a 403.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Messages;

setup();
start_messages_nginx();

my ($V1, $V3) = @ID{qw(visit1 visit3)};

# --- the matrix -----------------------------------------------------------------
my @CALLERS = (
    #  role       relation          user        visit  a co-participant  another one
    [ 'PATIENT', 'participant',     'patient1', $V1,   'nurse1',         'doctor'   ],
    [ 'PATIENT', 'non-participant', 'patient2', $V3,   'patient1',       'nurse1'   ],
    [ 'NURSE',   'participant',     'nurse1',   $V1,   'doctor',         'patient1' ],
    [ 'NURSE',   'non-participant', 'nurse2',   $V3,   'patient1',       'nurse1'   ],
    [ 'DOCTOR',  'participant',     'doctor',   $V1,   'patient1',       'nurse1'   ],
    [ 'DOCTOR',  'non-participant', 'doctor',   $V3,   'patient1',       'nurse1'   ],
    [ 'ADMIN',   'admin',           'admin',    $V3,   'nurse1',         'patient1' ],
);

# expected status, one column per caller above
my %MATRIX = (
    #                  PATIENT     NURSE       DOCTOR      ADMIN
    #                  part  non   part  non   part  non   admin
    send         => [  201,  404,  201,  404,  201,  404,  201 ],
    list         => [  200,  404,  200,  404,  200,  404,  200 ],
    participants => [  200,  404,  200,  404,  200,  404,  200 ],
    unread_count => [  200,  200,  200,  200,  200,  200,  200 ],
    mark_read    => [  200,  200,  200,  200,  200,  200,  200 ],
    delete_own   => [  200,  404,  200,  404,  200,  404,  200 ],
    delete_other => [  403,  404,  403,  404,  403,  404,  403 ],
);

my @ENDPOINTS = qw(send list participants unread_count mark_read delete_own delete_other);

my @CASES;
for my $ep (@ENDPOINTS) {
    for my $i (0 .. $#CALLERS) {
        my ($role, $rel, $user, $visit, $co, $other) = @{ $CALLERS[$i] };
        push @CASES, { endpoint => $ep, role => $role, relation => $rel, user => $user,
                       visit => $visit, co => $co, other => $other,
                       status => $MATRIX{$ep}[$i] };
    }
}

is(scalar @CASES, 49, 'the matrix: 7 endpoints x 7 callers = 49 cases');
is(scalar(keys %MATRIX), scalar @ENDPOINTS, 'every endpoint of the table is exercised');
is(scalar(grep { scalar @$_ == @CALLERS } values %MATRIX), scalar @ENDPOINTS,
   'every row of the table has one status per caller');
{
    my %seen;
    $seen{"$_->{endpoint}|$_->{role}|$_->{relation}"}++ for @CASES;
    is(scalar(grep { $_ == 1 } values %seen), 49, 'each endpoint x role x relation exactly once');
    my %roles = map { $_->{role} => 1 } @CASES;
    is_deeply([sort keys %roles], [qw(ADMIN DOCTOR NURSE PATIENT)], 'all four roles');
}

# --- fixtures: one message per case that needs one ------------------------------
# mark_read: a message addressed to the caller on its visit (participants);
# non-participants and the admin try a message on visit 3 between others.
# delete_own: a message sent by the caller on "its" visit (for a
# non-participant that is a message left from when it was one).
# delete_other: a message addressed to the caller (participants: a recipient
# is not the sender), or between others on visit 3.
my @specs;
for my $c (@CASES) {
    my $participant = $c->{relation} eq 'participant';
    if ($c->{endpoint} eq 'mark_read' || $c->{endpoint} eq 'delete_other') {
        $c->{message} = { visit => $c->{visit}, content => "fixture $c->{endpoint} $c->{user}",
                          $participant ? (from => $c->{co}, to => $c->{user})
                                       : (from => 'nurse1', to => 'patient1') };
    } elsif ($c->{endpoint} eq 'delete_own') {
        $c->{message} = { visit => $c->{visit}, from => $c->{user}, to => $c->{co},
                          content => "fixture own $c->{user}" };
    } else {
        next;
    }
    push @specs, $c->{message};
}
insert_messages(@specs);

my $absent_visit = 'cnosuchvisit0000000000001';
my %ABSENT = (
    list         => response(GET => "/api/messages/visit/$absent_visit", as => 'admin')->raw,
    participants => response(GET => "/api/messages/visit/$absent_visit/participants", as => 'admin')->raw,
);
like($ABSENT{list}, qr/"code":"NOT_FOUND"/, 'a nonexistent visit: 404 NOT_FOUND (the reference body)');

sub participants_of {
    my ($visit) = @_;
    return [ sort map { $_->[0] } @{ psql(qq{SELECT p FROM visits v JOIN bookings b ON b.id = v."bookingId",
        LATERAL (VALUES (b."patientId"), (v."nurseId"), (v."doctorId")) x(p)
        WHERE v.id = '$visit' AND p IS NOT NULL}) } ];
}
sub count_messages { psql_value(qq{SELECT count(*) FROM messages WHERE $_[0]}) }

# --- each endpoint: the request and what must hold afterwards ----------------------
my %RUN = (
    send => sub {
        my ($c) = @_;
        my $where = qq{"visitId" = '$c->{visit}' AND "senderId" = '} . uid($c->{user}) . q{'};
        my $before = count_messages($where);
        my $r = send_message($c->{user}, $c->{visit}, $c->{co}, "matrix: $c->{role} $c->{relation}");
        return ($r, sub {
            if ($r->status == 201) {
                my $d = data_of($r) || {};
                is_deeply([@$d{qw(visitId senderId recipientId)}],
                          [$c->{visit}, uid($c->{user}), uid($c->{co})], "$_[0]: the message as sent");
                is(count_messages($where), $before + 1, "$_[0]: one row stored");
            } else {
                is(count_messages($where), $before, "$_[0]: nothing stored");
            }
        });
    },
    list => sub {
        my ($c) = @_;
        my $r = response(GET => "/api/messages/visit/$c->{visit}", as => $c->{user});
        return ($r, sub {
            if ($r->status == 200) {
                is($r->json->{meta}{total}, count_messages(qq{"visitId" = '$c->{visit}'}),
                   "$_[0]: meta.total is every message of the visit");
            } else {
                is($r->raw, $ABSENT{list}, "$_[0]: the same body as a nonexistent visit");
            }
        });
    },
    participants => sub {
        my ($c) = @_;
        my $r = response(GET => "/api/messages/visit/$c->{visit}/participants", as => $c->{user});
        return ($r, sub {
            if ($r->status == 200) {
                is_deeply([sort map { $_->{id} } @{ data_of($r) || [] }], participants_of($c->{visit}),
                          "$_[0]: the visit's participants");
            } else {
                is($r->raw, $ABSENT{participants}, "$_[0]: the same body as a nonexistent visit");
            }
        });
    },
    unread_count => sub {
        my ($c) = @_;
        my $r = response(GET => '/api/messages/unread/count', as => $c->{user});
        return ($r, sub {
            is((data_of($r) || {})->{count},
               count_messages(qq{"recipientId" = '} . uid($c->{user}) . q{' AND NOT "isRead"}),
               "$_[0]: the caller's unread count");
        });
    },
    mark_read => sub {
        my ($c) = @_;
        my $id = $c->{message}{id};
        my $r = json_request(POST => '/api/messages/read', $c->{user}, { messageIds => [$id] });
        my $mine = $c->{relation} eq 'participant';
        return ($r, sub {
            is((data_of($r) || {})->{updated}, $mine ? 1 : 0,
               "$_[0]: updated " . ($mine ? '1 (addressed to the caller)' : '0 (not the caller\'s)'));
            is(message_row($id)->{isRead}, $mine ? 'true' : 'false', "$_[0]: isRead in the database");
        });
    },
    delete_own => sub {
        my ($c) = @_;
        my $id = $c->{message}{id};
        my $r = response(DELETE => "/api/messages/$id", as => $c->{user});
        return ($r, sub {
            is(defined message_row($id) ? 'kept' : 'gone', $r->status == 200 ? 'gone' : 'kept',
               "$_[0]: the row is " . ($r->status == 200 ? 'deleted' : 'kept'));
        });
    },
    delete_other => sub {
        my ($c) = @_;
        my $id = $c->{message}{id};
        my $r = response(DELETE => "/api/messages/$id", as => $c->{user});
        return ($r, sub { ok(defined message_row($id), "$_[0]: the row is kept") });
    },
);

my %CODE = (403 => 'FORBIDDEN', 404 => 'NOT_FOUND');

for my $c (@CASES) {
    my $name = "$c->{endpoint} as $c->{role} ($c->{relation}, $c->{user})";
    my ($r, $check) = $RUN{ $c->{endpoint} }->($c);
    if ($c->{status} < 400) {
        api_ok($r, "$name: $c->{status}", status => $c->{status});
    } else {
        api_error_is($r, $c->{status}, $CODE{ $c->{status} }, "$name: $c->{status} $CODE{ $c->{status} }");
    }
    $check->($name);
}

done_ahava();
