# Conflicting visit mutations at the same time (SPEC §5: "concurrent status
# changes cannot both win"), on two nginx workers.  Each race runs on fresh
# visits, three ways in turn:
#   table - LOCK TABLE visits is held while both requests queue behind it;
#   row   - the visit's row is held FOR UPDATE: both statements wait to lock
#           it, and each then reads the version the one before it committed
#           (READ COMMITTED), so the loser's condition fails on the winner's;
#   wire  - both requests are written before either answer is read.
# The locks are released only once PostgreSQL shows both requests waiting.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Visits;

setup();

my $NGINX = start_nginx(<<'_EOC_', workers => 2);
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

my $ROUNDS = 10;
my @MODES = qw(table row wire);

# Sends every request of @reqs ([action, visit, %opts]) at once under $mode;
# returns the responses in the same order.
sub race {
    my ($mode, $visit, @reqs) = @_;
    my $lock = $mode eq 'table' ? lock_table('visits')
             : $mode eq 'row'   ? Ahava::Visits::RowLock->new($visit)
             : undef;
    my @raw = map { mutation_request(@$_) } @reqs;
    my @conns = map { Ahava::Test::HTTP::Conn->open_raw($NGINX->port, $_) } @raw;
    if ($lock) {
        my $n = @reqs;
        ok(poll_until(10, sub { pg_lock_waiters() >= $n }),
           "$mode: all $n requests wait for the lock") or diag('waiting: ' . pg_lock_waiters());
        ok(!grep({ $_->done } @conns), "$mode: no answer while the lock is held");
        $lock->release;
    }
    Ahava::Test::HTTP::wait_all(\@conns, 15);
    return map { $_->response } @conns;
}

sub statuses { join ' ', map { $_->status } @_ }

# --- 1. two status changes from SCHEDULED -------------------------------------------------
# a) the same change twice (admin and nurse, both -> EN_ROUTE): they exclude
#    each other, exactly one 200 and one 409.
{
    my @v = new_visits([ map { { status => 'SCHEDULED' } } 1 .. $ROUNDS ]);
    for my $i (0 .. $ROUNDS - 1) {
        my $mode = $MODES[$i % @MODES];
        my $name = "EN_ROUTE twice, race $i ($mode)";
        my ($a, $b) = race($mode, $v[$i],
            ['status', $v[$i], as => 'admin',  body => { status => 'EN_ROUTE' }],
            ['status', $v[$i], as => 'nurse1', body => { status => 'EN_ROUTE' }]);
        my @ok = grep { $_->status == 200 } $a, $b;
        my @lost = grep { $_->status == 409 } $a, $b;
        ok(@ok == 1 && @lost == 1, "$name: exactly one 200 and one 409")
            or diag('got ' . statuses($a, $b) . "\n" . $a->dump . "\n" . $b->dump);
        next unless @ok == 1 && @lost == 1;
        api_error_is($lost[0], 409, 'CONFLICT', "$name: the loser gets 409 CONFLICT");
        my $row = visit_row($v[$i]);
        is($row->{status}, 'EN_ROUTE', "$name: stored EN_ROUTE");
        is($row->{updatedAt}, $ok[0]->json->{data}{updatedAt}, "$name: with the winner's updatedAt");
    }
}

# b) SCHEDULED -> EN_ROUTE (admin) vs SCHEDULED -> ARRIVED (nurse).  These do
#    not exclude each other: EN_ROUTE -> ARRIVED is itself a SPEC transition,
#    so "EN_ROUTE, then ARRIVED" is a legal serial order in which both win.
#    What may never happen is an outcome no serial order gives: ARRIVED
#    refused, or EN_ROUTE stored last (ARRIVED -> EN_ROUTE is not allowed).
#    So: ARRIVED always 200; EN_ROUTE 200 (it went first) or 409 (second);
#    the visit ends ARRIVED with the ARRIVED answer's updatedAt.
{
    my @v = new_visits([ map { { status => 'SCHEDULED' } } 1 .. $ROUNDS ]);
    my %orders;
    for my $i (0 .. $ROUNDS - 1) {
        my $mode = $MODES[$i % @MODES];
        my $name = "EN_ROUTE vs ARRIVED, race $i ($mode)";
        my ($en, $arr) = race($mode, $v[$i],
            ['status', $v[$i], as => 'admin',  body => { status => 'EN_ROUTE' }],
            ['status', $v[$i], as => 'nurse1', body => { status => 'ARRIVED' }]);
        api_ok($arr, "$name: ARRIVED wins in every serial order: 200") or next;
        ok($en->status == 200 || $en->status == 409, "$name: EN_ROUTE is 200 or 409")
            or diag($en->dump);
        if ($en->status == 409) {
            $orders{'ARRIVED only'}++;
            api_error_is($en, 409, 'CONFLICT', "$name: EN_ROUTE after ARRIVED: 409 CONFLICT");
        } elsif ($en->status == 200) {
            $orders{'EN_ROUTE then ARRIVED'}++;
            # (updatedAt is each transaction's start time, not the commit
            # order: it cannot tell which went first)
            is($en->json->{data}{status}, 'EN_ROUTE', "$name: both won, EN_ROUTE first");
        }
        my $row = visit_row($v[$i]);
        ok($row->{status} eq 'ARRIVED' && $row->{updatedAt} eq $arr->json->{data}{updatedAt},
           "$name: stored ARRIVED, the last change") or diag(explain $row);
    }
    note('EN_ROUTE vs ARRIVED: ' . join(', ', map { "$_ x $orders{$_}" } sort keys %orders));
}

# c) IN_PROGRESS -> COMPLETED (nurse) vs admin cancel: exactly one.
{
    my @v = new_visits([ map { { status => 'IN_PROGRESS' } } 1 .. $ROUNDS ]);
    for my $i (0 .. $ROUNDS - 1) {
        my $mode = $MODES[$i % @MODES];
        my $name = "COMPLETED vs admin cancel, race $i ($mode)";
        my ($done, $cancel) = race($mode, $v[$i],
            ['status', $v[$i], as => 'nurse1', body => { status => 'COMPLETED' }],
            ['cancel', $v[$i], as => 'admin',  body => { reason => 'race' }]);
        my @ok = grep { $_->status == 200 } $done, $cancel;
        ok(@ok == 1 && grep({ $_->status == 409 } $done, $cancel) == 1,
           "$name: exactly one 200 and one 409") or diag(statuses($done, $cancel));
        next unless @ok == 1;
        my $row = visit_row($v[$i]);
        is($row->{status}, $ok[0]->json->{data}{status}, "$name: the stored status is the winner's");
        is(defined $row->{actualEnd} ? 1 : 0, $done->status == 200 ? 1 : 0,
           "$name: actualEnd set only if COMPLETED won");
    }
}

# --- 2. patient cancel vs nurse IN_PROGRESS on an EN_ROUTE visit ------------------------
{
    my @v = new_visits([ map { { status => 'EN_ROUTE' } } 1 .. $ROUNDS ]);
    my %winners;
    for my $i (0 .. $ROUNDS - 1) {
        my $mode = $MODES[$i % @MODES];
        my $name = "cancel race $i ($mode)";
        # alternate who is sent first
        my @reqs = (['cancel', $v[$i], as => 'patient1', body => { reason => 'race' }],
                    ['status', $v[$i], as => 'nurse1', body => { status => 'IN_PROGRESS' }]);
        @reqs = reverse @reqs if $i % 2;
        my @res = race($mode, $v[$i], @reqs);
        @res = reverse @res if $i % 2;
        my ($cancel, $start) = @res;
        my $one = ($cancel->status == 200) + ($start->status == 200);
        ok($one == 1 && grep({ $_->status == 409 } @res) == 1,
           "$name: exactly one wins, the other gets 409")
            or diag('cancel ' . $cancel->status . ', IN_PROGRESS ' . $start->status
                    . "\n" . $cancel->dump . "\n" . $start->dump);
        next unless $one == 1;
        my $row = visit_row($v[$i]);
        my $audits = psql_value(qq{SELECT count(*) FROM audit_logs WHERE action = 'VISIT_CANCELLED'
                                   AND "resourceId" = '$v[$i]'});
        if ($cancel->status == 200) {
            $winners{cancel}++;
            api_error_is($start, 409, 'CONFLICT', "$name: IN_PROGRESS lost with 409 CONFLICT");
            ok($row->{status} eq 'CANCELLED' && !defined $row->{actualStart},
               "$name: stored CANCELLED, never started") or diag(explain $row);
            is($audits, 1, "$name: one VISIT_CANCELLED audit row");
        } else {
            $winners{start}++;
            api_error_is($cancel, 409, 'CONFLICT', "$name: the cancel lost with 409 CONFLICT");
            ok($row->{status} eq 'IN_PROGRESS' && defined $row->{actualStart},
               "$name: stored IN_PROGRESS with actualStart") or diag(explain $row);
            is($audits, 0, "$name: no VISIT_CANCELLED audit row");
        }
        my ($w) = grep { $_->status == 200 } @res;
        is($w->json->{data}{status}, $row->{status}, "$name: the winner's answer is the stored state");
    }
    note('cancel race winners: ' . join(', ', map { "$_ x $winners{$_}" } sort keys %winners));
}

# --- 3. a third writer changes the state while both wait: both lose ------------------------
for my $i (1 .. 3) {
    my $v = new_visit(status => 'SCHEDULED');
    my $lock = Ahava::Visits::RowLock->new($v);
    my @conns = map { Ahava::Test::HTTP::Conn->open_raw($NGINX->port, $_) }
        mutation_request('status', $v, as => 'admin',  body => { status => 'EN_ROUTE' }),
        mutation_request('cancel', $v, as => 'patient1', body => {});
    ok(poll_until(10, sub { pg_lock_waiters() >= 2 }), "third writer $i: both requests wait");
    $lock->release(sql => qq{UPDATE visits SET status = 'COMPLETED',
                             "updatedAt" = TIMESTAMP '2022-02-02 00:00:00' WHERE id = '$v';});
    Ahava::Test::HTTP::wait_all(\@conns, 15);
    my @res = map { $_->response } @conns;
    api_error_is($res[0], 409, 'CONFLICT', "third writer $i: the status change re-checked: 409");
    api_error_is($res[1], 409, 'CONFLICT', "third writer $i: the cancel re-checked: 409");
    my $row = visit_row($v);
    ok($row->{status} eq 'COMPLETED' && $row->{updatedAt} eq '2022-02-02T00:00:00.000Z',
       "third writer $i: the third writer's row stands") or diag(explain $row);
}

# --- 4. concurrent location updates are all kept (no lost update) -----------------------------
{
    my $v = new_visit(status => 'EN_ROUTE');
    my $lock = Ahava::Visits::RowLock->new($v);
    my @conns = map { Ahava::Test::HTTP::Conn->open_raw($NGINX->port,
                      mutation_request('location', $v, as => 'nurse1',
                                       body => { lat => $_, lng => -$_ })) } 1 .. 8;
    ok(poll_until(10, sub { pg_lock_waiters() >= 8 }), 'locations: 8 requests wait');
    $lock->release;
    Ahava::Test::HTTP::wait_all(\@conns, 15);
    is(join(' ', map { $_->response->status } @conns), join(' ', (200) x 8), 'locations: all 200');
    my $pts = psql(qq{SELECT (e->>'lat')::int FROM visits,
                      jsonb_array_elements("gpsCoordinates") e WHERE id = '$v'});
    is_deeply([sort { $a <=> $b } map { $_->[0] } @$pts], [1 .. 8], 'locations: all 8 points stored');
}


# --- 5. what "before the change" means: the row a concurrent writer left, not the statement's snapshot
# An assignment waits on the visit while another one commits.  Its previousNurseId (event and audit
# row) is the nurse that other assignment set, and that nurse, replaced, is told; a cancellation that
# loses to a status change names the status it lost to.
{
    my ($B, $C) = map { new_user(role => 'NURSE') } 1 .. 2;
    my $SUB = Ahava::Visits::Sub->new(Ahava::Test::redis()->port, 'ahava:user:*');
    my $v = new_visit(status => 'SCHEDULED');
    my $lock = Ahava::Visits::RowLock->new($v);
    my $conn = Ahava::Test::HTTP::Conn->open_raw($NGINX->port,
        mutation_request('assign-nurse', $v, as => 'admin', body => { nurseId => $C }));
    ok(poll_until(10, sub { pg_lock_waiters() >= 1 }), 'previous: the assignment waits on the visit');
    $SUB->sync; $SUB->take;
    $lock->release(sql => qq{UPDATE visits SET "nurseId" = '$B' WHERE id = '$v';});
    Ahava::Test::HTTP::wait_all([$conn], 15);
    my $r = $conn->response;
    api_ok($r, 'previous: the assignment, after another committed: 200') or diag($r->dump);
    is($r->json->{data}{nurse}{id} // $r->json->{data}{nurseId}, $C, 'previous: ... the visit is the new nurse\'s');
    my $meta = psql_value(qq{SELECT metadata->>'previousNurseId' FROM audit_logs
                            WHERE action = 'NURSE_ASSIGNED' AND "resourceId" = '$v'});
    is($meta, $B, 'previous: the audit row names the nurse replaced (the committed one)');
    $SUB->wait_for(4, 5);
    $SUB->sync;
    my @ev = grep { ($_->{json}{type} // '') eq 'NURSE_ASSIGNED' && ($_->{json}{data}{visitId} // '') eq $v } $SUB->take;
    my %to = map { $_->{channel} => $_->{json}{data} } @ev;
    ok($to{"ahava:user:$B"}, 'previous: the nurse replaced is told') or diag(join ' ', sort keys %to);
    is(($to{"ahava:user:$C"} || {})->{previousNurseId}, $B, 'previous: the event names her as the previous nurse');

    my $w = new_visit(status => 'SCHEDULED');
    $lock = Ahava::Visits::RowLock->new($w);
    $conn = Ahava::Test::HTTP::Conn->open_raw($NGINX->port,
        mutation_request('cancel', $w, as => 'patient1', body => { reason => 'late' }));
    ok(poll_until(10, sub { pg_lock_waiters() >= 1 }), 'previous: a cancellation waits on the visit');
    $lock->release(sql => qq{UPDATE visits SET status = 'IN_PROGRESS' WHERE id = '$w';});
    Ahava::Test::HTTP::wait_all([$conn], 15);
    api_error_is($conn->response, 409, 'CONFLICT', 'previous: the cancellation after IN_PROGRESS committed: 409');
    like($conn->response->json->{error} // '', qr/IN_PROGRESS/, '... naming IN_PROGRESS, the status it lost to')
        or diag($conn->response->dump);
}

done_ahava();
