# Jobs from nginx (SPEC §5, §9; README "Jobs and the outbox"): every trigger
# enqueues exactly its jobs in BullMQ's own layout — read back by the real
# bullmq npm package (Queue.getJobs) with their names, data and options —
# and nothing for the actor; a BullMQ Worker in Node processes them, and a
# job a Node Queue added beside ours is left alone; no plaintext of a
# message in the outbox or in Redis; Redis stopped during a burst, then
# started: every event and job arrives once, in order; an outbox row seen
# again after it was sent is not sent twice; the export endpoints'
# authorization matrix and JSON.
use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Encode ();
use Ahava::Test;
use Ahava::Messages;
use Ahava::Visits qw();

setup(private_redis => 1);
start_messages_nginx();

my $JSON = JSON::PP->new->utf8->canonical;
my $TOP = repo_root();
my $REDIS = Ahava::Test::redis();
my $URL = env_value('REDIS_URL');
my @QUEUES = qw(pdf-export email push-notification);
my ($P1, $P2, $N1, $N2, $D, $A) = @ID{qw(patient1 patient2 nurse1 nurse2 doctor admin)};
my $D2 = Ahava::Visits::new_user(role => 'DOCTOR');
my %EMAIL = map { @$_ } @{ psql('SELECT id, email FROM users') };

sub redis_state { my $r = response(GET => '/health'); ref $r->json eq 'HASH' ? $r->json->{redis} // '' : '' }
ok(poll_until(10, sub { redis_state() eq 'ok' }), 'nginx is connected to Redis');

sub peer {
    my (@args) = @_;
    my ($rc, $out) = run_capture(['node', "$TOP/t/lib/bullmq-peer.js", @args]);
    die "bullmq-peer @args failed ($rc): $out" if $rc;
    my ($line) = grep { /^[\[{]/ } split /\n/, $out;
    return $JSON->decode($line);
}
sub outbox_empty { poll_until(10, sub { psql_value('SELECT count(*) FROM ahava_outbox') == 0 }) }
sub all_jobs { outbox_empty(); return peer('jobs', $URL, join(',', @QUEUES)) }

# the jobs an action added, by queue
sub jobs_of {
    my ($action) = @_;
    my $before = all_jobs();
    my %seen = map { my $q = $_; map { ("$q/$_->{id}" => 1) } @{ $before->{$q} } } @QUEUES;
    my $res = $action->();
    my $after = all_jobs();
    my %new = map { my $q = $_; ($q => [grep { !$seen{"$q/$_->{id}"} } @{ $after->{$q} }]) } @QUEUES;
    return ($res, \%new);
}
sub push_users  { [sort map { $_->{data}{userId} } @{ $_[0]{'push-notification'} }] }
sub email_users { [sort map { $_->{data}{to} } @{ $_[0]{email} }] }
sub mutate { my ($what, $v, $as, $body) = @_; json_request(POST => "/api/visits/$v/$what", $as, $body // {}) }

# --- the options of SPEC §9, as BullMQ reads them --------------------------------------------------
my $MARKER = 'MARKER-' . int(rand 1e9) . '-do-not-store';
my ($r, $new) = jobs_of(sub { send_message('nurse1', $ID{visit1}, 'patient1', "Dressing changed. $MARKER") });
api_ok($r, 'nurse1 → patient1: 201', status => 201);
my $msg = data_of($r) || {};
{
    my @push = @{ $new->{'push-notification'} };
    is(scalar @push, 1, 'NEW_MESSAGE: one push job');
    is_deeply([map { scalar @{ $new->{$_} } } qw(pdf-export email)], [0, 0], '... and no other job');
    my $j = $push[0] || {};
    is($j->{name}, 'send-push', '... named send-push');
    is_deeply($j->{data}, { userId => $P1, title => 'New message', body => 'New message from Nurse Dlamini',
                            data => { type => 'NEW_MESSAGE', visitId => $ID{visit1}, messageId => $msg->{id} } },
              '... data {userId, title, body, data}: who wrote, on which visit, never what')
        or diag(explain $j->{data});
    is_deeply($j->{opts}, { attempts => 3, backoff => { type => 'exponential', delay => 2000 }, priority => 5,
                            removeOnComplete => 100, removeOnFail => 10 },
              '... opts: 3 attempts, exponential backoff from 2000 ms, priority 5, keep 100/10');
    is($j->{state}, 'prioritized', '... waiting to be processed (prioritized)');
    like($j->{id}, qr/^ahava-\d+-0$/, '... its BullMQ id names its outbox row (ahava-<row>-<job>)');
    ok(abs($j->{timestamp} / 1000 - time) < 60, '... timestamp in epoch ms');
}

# the sender's name as JSON in the push: a quote, a backslash and letters beyond ASCII
{
    my ($first, $last) = psql("SELECT \"firstName\", \"lastName\" FROM users WHERE id = '$P1'", raw => 1)->[0]->@*;
    psql(qq{UPDATE users SET "firstName" = 'Zoë "Z"', "lastName" = 'Nkosi\\Ñ' WHERE id = '$P1'});
    my ($r, $new) = jobs_of(sub { send_message('patient1', $ID{visit1}, 'nurse1', 'a name to escape') });
    api_ok($r, 'a sender named with a quote and a backslash: 201', status => 201);
    my ($j) = @{ $new->{'push-notification'} };
    is($j && $j->{data}{body}, Encode::decode('UTF-8', 'New message from Zoë "Z" Nkosi\\Ñ'),
       '... the push names the sender exactly');
    psql(sprintf(q{UPDATE users SET "firstName" = %s, "lastName" = %s WHERE id = '%s'},
                 Ahava::Messages::sql_quote($first), Ahava::Messages::sql_quote($last), $P1));
}

# --- no plaintext at rest ------------------------------------------------------------------------------
sub redis_dump {
    my ($rc, $keys) = run_capture(['redis-cli', '-p', $REDIS->port, '--scan']);
    my $all = '';
    for my $k (split /\n/, $keys) {
        my (undef, $type) = run_capture(['redis-cli', '-p', $REDIS->port, 'type', $k]);
        chomp $type;
        my @cmd = $type eq 'hash' ? ('hgetall', $k) : $type eq 'string' ? ('get', $k)
                : $type eq 'list' ? ('lrange', $k, 0, -1) : $type eq 'zset' ? ('zrange', $k, 0, -1)
                : $type eq 'stream' ? ('xrange', $k, '-', '+') : ();
        next unless @cmd;
        my (undef, $v) = run_capture(['redis-cli', '-p', $REDIS->port, @cmd]);
        $all .= "$k\n$v\n";
    }
    return $all;
}
{
    my $dump = redis_dump();
    like($dump, qr/bull:push-notification:ahava-\d+-0/, 'Redis holds the push job');
    unlike($dump, qr/\Q$MARKER\E/, 'no key, hash, list or stream in Redis holds the message text');
}

# --- each trigger: exactly its jobs, nothing for the actor -------------------------------------------
my $V = Ahava::Visits::new_visit(status => 'SCHEDULED');
my @cases = (
    [ 'status IN_PROGRESS by the nurse', sub { json_request(PATCH => "/api/visits/$V/status", 'nurse1', { status => 'IN_PROGRESS' }) },
      [$P1, $D], [] ],
    [ 'location by the nurse (no job)', sub { mutate('location', $V, 'nurse1', { lat => -26.1, lng => 28.0 }) },
      [], [] ],
    [ 'nurse report', sub { mutate('nurse-report', $V, 'nurse1', { nurseReport => "Report $MARKER" }) },
      [$P1, $D], [] ],
    [ 'doctor review', sub { mutate('doctor-review', $V, 'doctor', { doctorReview => 'Good care', doctorRating => 5 }) },
      [$P1, $N1], [] ],
);
my $VC = Ahava::Visits::new_visit(status => 'SCHEDULED');
my $VA = Ahava::Visits::new_visit(status => 'EN_ROUTE');
push @cases, (
    [ 'cancel by the patient', sub { mutate('cancel', $VC, 'patient1', { reason => "private $MARKER" }) },
      [$N1, $D], [$EMAIL{$N1}] ],
    [ 'cancel by the admin', sub { mutate('cancel', Ahava::Visits::new_visit(status => 'EN_ROUTE'), 'admin') },
      [$P1, $N1, $D], [$EMAIL{$P1}, $EMAIL{$N1}] ],
    [ 'assign-nurse by the admin', sub { mutate('assign-nurse', $VA, 'admin', { nurseId => $N2 }) },
      [$P1, $N1, $N2, $D], [$EMAIL{$N2}] ],
    [ 'assign-doctor by the admin', sub { mutate('assign-doctor', $VA, 'admin', { doctorId => $D2 }) },
      [$P1, $N2, $D, $D2], [] ],
    [ 'a refused status change (409): nothing', sub { json_request(PATCH => "/api/visits/$VC/status", 'nurse1', { status => 'ARRIVED' }) },
      [], [], 409 ],
    [ 'messages read: no job', sub { json_request(POST => '/api/messages/read', 'patient1', { messageIds => [$msg->{id}] }) },
      [], [] ],
);
for my $c (@cases) {
    my ($name, $action, $push, $email, $status) = @$c;
    my ($res, $jobs) = jobs_of($action);
    is($res->status, $status // 200, "$name: " . ($status // 200)) or diag($res->body);
    is_deeply(push_users($jobs), [sort @$push], "$name: push to " . (join(', ', map { substr($_, 1, 12) } @$push) || 'nobody'));
    is_deeply(email_users($jobs), [sort @$email], "$name: email to " . (join(', ', @$email) || 'nobody'));
    is(scalar @{ $jobs->{'pdf-export'} }, 0, "$name: no pdf-export");
    for my $j (@{ $jobs->{'push-notification'} }) {
        like($j->{data}{body} // '', qr/^\S.*\.$/, "$name: push to " . substr($j->{data}{userId}, 1, 12) . ": '$j->{data}{body}'");
        ok($j->{data}{data}{visitId}, "$name: ... names the visit");
    }
    for my $j (@{ $jobs->{email} }) {
        is($j->{name}, 'send-email', "$name: email job send-email");
        like($j->{data}{subject} // '', qr/Ahava visit/, "$name: ... subject '$j->{data}{subject}'");
        like($j->{data}{text} // '', qr/^Dear \S+,\n\n.+/, "$name: ... a text part");
        like($j->{data}{html} // '', qr/^<!DOCTYPE html>.*<p>Dear /s, "$name: ... an HTML part");
        is($j->{opts}{priority}, 3, "$name: ... priority 3");
        is_deeply([@{ $j->{opts} }{qw(removeOnComplete removeOnFail attempts)}], [50, 10, 3], "$name: ... keep 50/10, 3 attempts");
    }
    my $all = $JSON->encode($jobs);
    unlike($all, qr/\Q$MARKER\E/, "$name: no job carries what was written");
}

# --- a Node Queue's job beside ours; a BullMQ Worker processes them all ---------------------------
{
    my $node = peer('add', $URL, 'push-notification', 'send-push',
                    $JSON->encode({ userId => $P2, title => 'from node', body => 'node producer' }));
    ok($node->{id} && $node->{id} =~ /^\d+$/, "a Node Queue adds a job beside ours (id $node->{id})");
    my ($res, $jobs) = jobs_of(sub { send_message('doctor', $ID{visit1}, 'patient1', 'after the node job') });
    is(scalar @{ $jobs->{'push-notification'} }, 1, 'our next push is one job');
    my $list = all_jobs()->{'push-notification'};
    my ($mine) = grep { $_->{id} eq $node->{id} } @$list;
    is_deeply([$mine->{name}, $mine->{data}, $mine->{state}], ['send-push', { userId => $P2, title => 'from node', body => 'node producer' }, 'waiting'],
              "... the Node job is untouched by our producer (name, data, state)");
    my @ours = grep { $_->{id} =~ /^ahava-/ } @$list;
    my $n = @$list;
    my $w = peer('work', $URL, 'push-notification', $n);
    is(scalar @{ $w->{processed} }, $n, "a BullMQ Worker in Node processed all $n push jobs");
    is_deeply([sort map { $_->{id} } @{ $w->{processed} }], [sort map { $_->{id} } @$list], '... ours and the Node one');
    is_deeply([sort @{ $w->{events} }], [sort map { $_->{id} } @$list], '... QueueEvents saw each completed');
    is($w->{counts}{completed}, $n, "... getJobCounts: $n completed");
    is($w->{counts}{prioritized} + $w->{counts}{waiting}, 0, '... none left waiting');
    my ($first) = grep { $_->{id} eq $ours[0]{id} } @{ $w->{processed} };
    is_deeply($first->{data}, $ours[0]{data}, '... the worker got our data as we wrote it');
}

# --- exports: the authorization matrix and the JSON ---------------------------------------------------
{
    my %want = (patient1 => 202, nurse1 => 202, doctor => 202, admin => 202, patient2 => 404, nurse2 => 404);
    my %export;
    for my $who (sort keys %want) {
        my ($res, $jobs) = jobs_of(sub { json_request(POST => "/api/visits/$ID{visit1}/export", $who) });
        is($res->status, $want{$who}, "POST export of visit 1 by $who: $want{$who}");
        if ($want{$who} == 202) {
            my $id = (data_of($res) || {})->{exportJobId} // '';
            like($id, qr/^c[a-z0-9]{24}$/, "... {exportJobId}");
            $export{$who} = $id;
            my ($j) = @{ $jobs->{'pdf-export'} };
            is(scalar @{ $jobs->{'pdf-export'} }, 1, '... one pdf-export job');
            is_deeply([$j->{name}, $j->{data}], ['generate-pdf', { exportJobId => $id, userId => uid($who), type => 'visit_report',
                                                 filters => { visitId => $ID{visit1} } }],
                      '... generate-pdf {exportJobId, userId, type, filters}');
            is_deeply([@{ $j->{opts} }{qw(priority removeOnComplete removeOnFail attempts)}], [1, 10, 5, 3],
                      '... priority 1, keep 10/5, 3 attempts');
            is_deeply(psql(qq{SELECT "userId", "userRole", type, status, filters->>'visitId' FROM export_jobs WHERE id = '$id'}),
                      [[uid($who), ($who eq 'admin' ? 'ADMIN' : $who =~ /patient/ ? 'PATIENT' : $who =~ /nurse/ ? 'NURSE' : 'DOCTOR'),
                        'visit_report', 'PENDING', $ID{visit1}]], '... its export_jobs row, PENDING');
        } else {
            is(($res->json || {})->{code}, 'NOT_FOUND', '... NOT_FOUND');
            is_deeply([map { scalar @{ $jobs->{$_} } } @QUEUES], [0, 0, 0], '... and no job');
        }
    }
    api_error_is(json_request(POST => '/api/visits/nosuchvisit/export', 'admin'), 404, 'NOT_FOUND', 'export of no visit: 404');
    is(psql_value(q{SELECT count(*) FROM export_jobs}), 4, 'four export_jobs rows, no more');

    my $id = $export{patient1};
    my $res = response(GET => "/api/exports/$id", as => 'patient1');
    api_ok($res, 'GET /api/exports/:id by its owner: 200');
    my $d = data_of($res) || {};
    is_deeply([sort keys %$d], [sort qw(id type status filters fileUrl fileSize checksum createdAt completedAt error)],
              '... {id, type, status, filters, fileUrl, fileSize, checksum, createdAt, completedAt, error}');
    is_deeply([@$d{qw(id type status fileUrl fileSize checksum completedAt error)}], [$id, 'visit_report', 'PENDING', undef, undef, undef, undef, undef],
              '... PENDING, no file yet');
    like($d->{createdAt} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, '... createdAt ISO-8601 UTC');
    psql(qq{UPDATE export_jobs SET status = 'COMPLETED', "fileUrl" = '/uploads/exports/r.pdf', "fileSize" = 1234,
            checksum = repeat('a', 64), "completedAt" = LOCALTIMESTAMP(3) WHERE id = '$id'});
    $d = data_of(response(GET => "/api/exports/$id", as => 'admin')) || {};
    is_deeply([@$d{qw(status fileUrl fileSize checksum)}], ['COMPLETED', '/uploads/exports/r.pdf', 1234, 'a' x 64],
              'the admin reads it too, completed: fileUrl, fileSize (a number), checksum');
    api_error_is(response(GET => "/api/exports/$id", as => $_), 404, 'NOT_FOUND', "GET another's export as $_: 404")
        for qw(nurse1 doctor patient2);
    api_error_is(response(GET => '/api/exports/nosuchexport', as => 'admin'), 404, 'NOT_FOUND', 'GET no export: 404');
    api_error_is(response(GET => "/api/exports/$id"), 401, 'TOKEN_MISSING', 'GET without a token: 401');

    # an early answer: nothing runs after it, no row and no job
    my $counted = reset_statements();
    my ($res401, $jobs401) = jobs_of(sub { response(POST => "/api/visits/$ID{visit1}/export",
                                                     headers => { Authorization => 'Bearer not.a.token' }) });
    api_error_is($res401, 401, 'TOKEN_INVALID', 'POST export with a bad token: 401');
    is(psql_value(q{SELECT count(*) FROM export_jobs}), 4, '... no export_jobs row');
    is_deeply([map { scalar @{ $jobs401->{$_} } } @QUEUES], [0, 0, 0], '... and no job');
    SKIP: {
        skip 'no pg_stat_statements', 1 unless $counted;
        is(statement_calls(like => '%INSERT INTO export_jobs%'), 0, '... and the export statement never ran');
    }
}

# --- exports: asked again while in progress, the same one; at most 5 in progress a caller ---------------
{
    my $rows = sub { psql_value(q{SELECT count(*) FROM export_jobs}) };
    psql(q{UPDATE export_jobs SET status = 'COMPLETED'});
    my ($first, $jobs1) = jobs_of(sub { json_request(POST => "/api/visits/$ID{visit1}/export", 'nurse1') });
    is($first->status, 202, 'a first export of visit 1 by nurse1 (the earlier one completed): 202')
        or diag($first->dump);
    my $id = (data_of($first) || {})->{exportJobId} // '';
    is(scalar @{ $jobs1->{'pdf-export'} }, 1, '... one pdf-export job');
    my $n = $rows->();
    for my $status (qw(PENDING PROCESSING)) {
        psql(qq{UPDATE export_jobs SET status = '$status' WHERE id = '$id'});
        my ($again, $jobs2) = jobs_of(sub { json_request(POST => "/api/visits/$ID{visit1}/export", 'nurse1') });
        is($again->status, 202, "asked again while $status: 202");
        is((data_of($again) || {})->{exportJobId}, $id, '... the same exportJobId');
        is($rows->(), $n, '... no new export_jobs row');
        is_deeply([map { scalar @{ $jobs2->{$_} } } @QUEUES], [0, 0, 0], '... and no job');
    }
    my ($other) = jobs_of(sub { json_request(POST => "/api/visits/$ID{visit1}/export", 'doctor') });
    isnt((data_of($other) || {})->{exportJobId} // $id, $id, "another participant's export is theirs");
    psql(qq{UPDATE export_jobs SET status = 'FAILED' WHERE id = '$id'});
    my ($after) = jobs_of(sub { json_request(POST => "/api/visits/$ID{visit1}/export", 'nurse1') });
    is($after->status, 202, 'asked again once it failed: 202');
    isnt((data_of($after) || {})->{exportJobId}, $id, '... a new export');

    # five in progress (the one above and four more visits), then a sixth is refused
    my @v = Ahava::Visits::new_visits([ map { { nurse => uid('nurse1'), patient => uid('patient1'), status => 'COMPLETED' } } 1 .. 5 ]);
    for my $i (0 .. 3) {
        is(json_request(POST => "/api/visits/$v[$i]/export", 'nurse1')->status, 202, "export in progress " . ($i + 2) . ": 202");
    }
    $n = $rows->();
    my ($sixth, $jobs6) = jobs_of(sub { json_request(POST => "/api/visits/$v[4]/export", 'nurse1') });
    api_error_is($sixth, 429, 'RATE_LIMITED', 'a sixth export while five are in progress: 429');
    is($rows->(), $n, '... no export_jobs row');
    is_deeply([map { scalar @{ $jobs6->{$_} } } @QUEUES], [0, 0, 0], '... and no job');
    is(json_request(POST => "/api/visits/$v[0]/export", 'nurse1')->status, 202, '... one of the five asked again is still answered');
    psql(qq{UPDATE export_jobs SET status = 'COMPLETED' WHERE "userId" = '${\ uid('nurse1')}' AND filters->>'visitId' = '$v[1]'});
    is(json_request(POST => "/api/visits/$v[4]/export", 'nurse1')->status, 202, 'once one is completed, the sixth: 202');
    psql(q{UPDATE export_jobs SET status = 'COMPLETED'});

    # at the same time: 8 requests for one visit make one export; 10 for ten visits make 5, 5 get 429
    my $at_once = sub {
        my @c = map { Ahava::Test::HTTP::Conn->open_raw($Ahava::Test::DEFAULT_NGINX->port,
                          Ahava::Test::HTTP::build_request(POST => "/api/visits/$_/export",
                              headers => Ahava::Visits::_headers(as => 'nurse1'), body => '{}')) } @_;
        Ahava::Test::HTTP::wait_all(\@c, 15);
        return map { $_->response } @c;
    };
    my @w = Ahava::Visits::new_visits([ map { { nurse => uid('nurse1'), patient => uid('patient1') } } 1 .. 11 ]);
    my @r = $at_once->(($w[0]) x 8);
    is(join(' ', map { $_->status } @r), join(' ', (202) x 8), 'eight exports of one visit at once: all 202');
    my %eid = map { ((data_of($_) || {})->{exportJobId} // '') => 1 } @r;
    is(scalar keys %eid, 1, '... with one exportJobId');
    is(psql_value(qq{SELECT count(*) FROM export_jobs WHERE filters->>'visitId' = '$w[0]'}), 1, '... one export_jobs row');
    @r = $at_once->(@w[1 .. 10]);
    my %st;
    $st{ $_->status }++ for @r;
    is_deeply(\%st, { 202 => 4, 429 => 6 }, 'ten exports of ten visits at once, one in progress: 4 more 202, 6 429');
    is(psql_value(qq{SELECT count(*) FROM export_jobs WHERE "userId" = '${\ uid('nurse1')}' AND status = 'PENDING'}), 5,
       '... five in progress, no more');
    psql(q{UPDATE export_jobs SET status = 'COMPLETED'});

    # one in progress for over an hour (its job lost) no longer counts
    psql(qq{UPDATE export_jobs SET status = 'PENDING', "createdAt" = LOCALTIMESTAMP(3) - interval '2 hours'
            WHERE filters->>'visitId' = '$w[0]'});
    my ($stale) = $at_once->($w[0]);
    is($stale->status, 202, 'an export in progress for over an hour is not answered again: 202');
    isnt((data_of($stale) || {})->{exportJobId}, (keys %eid)[0], '... a new one');
    psql(q{UPDATE export_jobs SET status = 'COMPLETED'});
}

# --- an outbox row seen again after it was sent is not sent twice -------------------------------------
{
    my $sub = Ahava::Messages::Subscriber->new($REDIS->port);
    my ($res, $jobs) = jobs_of(sub { send_message('nurse1', $ID{visit1}, 'patient1', 'once only') });
    my ($push) = @{ $jobs->{'push-notification'} };
    my ($row) = $push->{id} =~ /^ahava-(\d+)-0$/;
    my @ev = $sub->wait_for(5, sub { @_ >= 2 });
    is(scalar @ev, 2, 'NEW_MESSAGE published to the recipient and the sender');
    $sub->take;
    # as if the relay had died between Redis and its DELETE: the row is back
    psql(qq{INSERT INTO ahava_outbox (id, topic, recipients, payload, jobs, "createdAt")
            VALUES ($row, 'NEW_MESSAGE', ARRAY['$P1', '$N1'], '{}',
                    '[["push-notification", {"userId": "$P1"}]]', LOCALTIMESTAMP(3) - interval '1 minute')});
    ok(outbox_empty(), 'the sweep takes the row again (and deletes it)');
    $sub->wait_for(1.5, sub { @_ >= 1 });
    is(scalar($sub->take), 0, '... the event is not published again');
    my $list = all_jobs()->{'push-notification'};
    is(scalar(grep { $_->{id} =~ /^ahava-$row-/ } @$list), 1, '... the job is there once');
    is_deeply((grep { $_->{id} eq "ahava-$row-0" } @$list)[0]{data}, $push->{data}, '... as it was first written');
    $sub->disconnect;
}

# --- a row Redis refuses holds no other back; it goes once Redis takes it, its event once --------------
# A queue's key of another type, for the cancellation's emails: its meta (refused when the queue is
# looked up) and its events stream (refused before the row writes anything: a job's hash written
# without its place in the queue would be taken for a duplicate, and lost, once mended).
my $redis = sub { my (undef, $out) = run_capture(['redis-cli', '-p', $REDIS->port, @_]); chomp $out; $out };
for my $key ('meta', 'events') {
    my $n = "refused row ($key)";
    ok(outbox_empty(), "$n: the outbox is empty to begin with");
    my $sub = Ahava::Messages::Subscriber->new($REDIS->port);
    $redis->('DEL', "bull:email:$key");
    is($redis->('SET', "bull:email:$key", 'a string'), 'OK', "$n: the email queue's $key made a string");
    my $v = Ahava::Visits::new_visit(status => 'SCHEDULED');
    api_ok(mutate('cancel', $v, 'admin'), "$n: a cancellation (its emails go to that queue): 200");
    my $res = send_message('nurse1', $ID{visit1}, 'patient1', "after the refused row $MARKER");
    is($res->status, 201, "$n: a message after it: 201");
    my $mid = (data_of($res) || {})->{id} // '';
    my @ev = $sub->wait_for(10, sub { (grep { ($_->{payload}{data}{id} // '') eq $mid } @_) >= 2 });
    is(scalar(grep { ($_->{payload}{data}{id} // '') eq $mid } @ev), 2, '... its NEW_MESSAGE goes out all the same (both channels)');
    is(scalar(grep { ($_->{payload}{type} // '') eq 'VISIT_CANCELLED' } @ev), 0, '... the refused row\'s event does not (its jobs go first)');
    is(psql_value(q{SELECT count(*) FROM ahava_outbox}), 1, '... the refused row alone waits in the outbox');
    error_log_like(qr/outbox row \d+ not relayed: WRONGTYPE bull:email:$key/, "$n: said in the error log", timeout => 5);
    is($redis->('DEL', "bull:email:$key"), 1, "$n: the key mended");
    ok(poll_until(25, sub { psql_value('SELECT count(*) FROM ahava_outbox') == 0 }),
       '... the row goes (a refused row is put off 10 s, then the sweep takes it)');
    $sub->wait_for(5, sub { (grep { ($_->{payload}{type} // '') eq 'VISIT_CANCELLED' } @_) >= 2 });
    $sub->wait_for(1, sub { 0 });
    my @c = grep { ($_->{payload}{type} // '') eq 'VISIT_CANCELLED' && ($_->{payload}{data}{visitId} // '') eq $v } $sub->take;
    my %to;
    $to{ $_->{user} }++ for @c;
    ok(@c >= 2 && !grep({ $_ != 1 } values %to), '... its VISIT_CANCELLED once to each participant')
        or diag(explain \%to);
    my $list = all_jobs();
    my ($row) = map { /^ahava-(\d+)-/ ? $1 : () } map { $_->{id} } grep { ($_->{data}{data}{visitId} // '') eq $v } @{ $list->{'push-notification'} };
    ok($row, '... its push jobs are there');
    my $pfx = 'ahava-' . ($row // 'x') . '-';
    my %ids;
    $ids{ $_->{id} }++ for grep { index($_->{id}, $pfx) == 0 } map { @{ $list->{$_} } } @QUEUES;
    is(scalar(grep { index($_->{id}, $pfx) == 0 } @{ $list->{email} }), 2, '... its two emails, queued once it was taken');
    ok(!grep({ $_ != 1 } values %ids), '... every job of the row once');
    $sub->disconnect;
}

# --- rows refused by the hundred do not fill the sweep: the rows behind them go -----------------------
# (the sweep reads the oldest 100; a refused row is put off, so the next sweep reads past it)
{
    ok(outbox_empty(), 'refused rows: the outbox is empty to begin with');
    my $sub = Ahava::Messages::Subscriber->new($REDIS->port);
    is($redis->('SET', 'bull:email:meta', 'a string'), 'OK', 'refused rows: the email queue\'s meta made a string');
    # rows only a sweep takes (as if from a worker that died): 150 with an email each, then an event
    psql(qq{INSERT INTO ahava_outbox (jobs, "createdAt") SELECT
              '[["email", {"to": "x\@test.invalid", "subject": "s", "html": "h"}]]',
              LOCALTIMESTAMP(3) - interval '1 minute' FROM generate_series(1, 150)});
    psql(qq{INSERT INTO ahava_outbox (topic, recipients, payload, "createdAt") VALUES
              ('MESSAGES_READ', ARRAY['$P1'], '{"behind":"the refused"}', LOCALTIMESTAMP(3) - interval '1 minute')});
    my @ev = $sub->wait_for(10, sub { grep { ($_->{payload}{data}{behind} // '') eq 'the refused' } @_ });
    is(scalar(grep { ($_->{payload}{data}{behind} // '') eq 'the refused' } @ev), 1, 'refused rows: the event behind 150 refused rows goes out')
        or diag(psql_value('SELECT count(*) FROM ahava_outbox') . ' rows left');
    is(psql_value(q{SELECT count(*) FROM ahava_outbox WHERE topic IS NULL}), 150, '... the refused ones wait');
    my @rows = map { $_->[0] } @{ psql(q{SELECT id FROM ahava_outbox WHERE topic IS NULL}) };
    is($redis->('DEL', 'bull:email:meta'), 1, 'refused rows: the key mended');
    ok(poll_until(30, sub { psql_value('SELECT count(*) FROM ahava_outbox') == 0 }), '... they go');
    # counted in Redis (the peer's listing of 150 more jobs would not fit its pipe), then taken away
    my $count = q{local n = 0 for _, id in ipairs(ARGV) do
                    if redis.call('ZSCORE', KEYS[1], 'ahava-' .. id .. '-0') then n = n + 1 end end return n};
    is($redis->('EVAL', $count, 1, 'bull:email:prioritized', @rows), 150, '... their 150 emails queued');
    $redis->('EVAL', q{for _, id in ipairs(ARGV) do local j = 'ahava-' .. id .. '-0'
                         redis.call('ZREM', KEYS[1], j) redis.call('DEL', 'bull:email:' .. j) end},
             1, 'bull:email:prioritized', @rows);
    $sub->disconnect;
}

# --- Redis stopped during a burst of mutations, then started ------------------------------------------
{
    ok($REDIS->stop, 'Redis stopped');
    ok(poll_until(6, sub { redis_state() eq 'down' }), '... nginx notices');
    my @sent;
    for my $i (1 .. 20) {
        my $who = $i % 2 ? 'nurse1' : 'patient1';
        my $res = send_message($who, $ID{visit1}, $who eq 'nurse1' ? 'patient1' : 'nurse1', "burst $i $MARKER");
        push @sent, (data_of($res) || {})->{id} if $res->status == 201;
    }
    is(scalar @sent, 20, 'twenty messages sent while Redis is down: all 201');
    my $c = mutate('cancel', Ahava::Visits::new_visit(status => 'SCHEDULED'), 'admin');
    api_ok($c, 'a cancellation too: 200');
    is(psql_value(q{SELECT count(*) FROM ahava_outbox}), 21, 'the outbox holds their 21 rows (a row per change: its event and its jobs)');
    is(psql_value(q{SELECT sum(json_array_length(jobs::json)) FROM ahava_outbox}), 20 + 3 + 2, '... with their 25 jobs (pushes, emails)');
    my $rows = join "\n", map { join '|', map { $_ // '' } @$_ } @{ psql('SELECT * FROM ahava_outbox') };
    unlike($rows, qr/\Q$MARKER\E/, '... none holds the message text (the event row holds its ciphertext)');
    like($rows, qr/\|v2:[A-Za-z0-9+\/=]+:[A-Za-z0-9+\/=]+:[A-Za-z0-9+\/=]+\|/, '... it does hold the ciphertext');

    # with a password at first, so that the subscriber is in before nginx publishes anything
    ok($REDIS->start(requirepass => 'burst-test'), 'Redis started again');
    my $sub = Ahava::Messages::Subscriber->new($REDIS->port, auth => 'burst-test');
    ok($REDIS->open_to_all, '... the subscriber in, nginx let in');
    my @ev = $sub->wait_for(15, sub { (grep { ($_->{payload}{type} // '') eq 'NEW_MESSAGE' } @_) >= 40 });
    ok(outbox_empty(), 'the outbox drains');
    $sub->wait_for(1, sub { 0 });
    @ev = grep { ($_->{payload}{type} // '') eq 'NEW_MESSAGE' } $sub->take;
    my %by;
    push @{ $by{ $_->{user} } }, $_->{payload}{data}{id} for @ev;
    is_deeply(\%by, { $P1 => \@sent, $N1 => \@sent }, 'every NEW_MESSAGE arrives once on both channels, in the order sent');
    is(scalar(grep { ($_->{payload}{data}{content} // '') =~ /^burst \d+ / } @ev), 40, '... decrypted');
    my $list = all_jobs();
    my %burst = map { $_ => 1 } @sent;
    my @push = grep { $burst{ $_->{data}{data}{messageId} // '' } } @{ $list->{'push-notification'} };
    my %n;
    $n{ $_->{data}{data}{messageId} }++ for @push;
    is_deeply([sort keys %n], [sort @sent], 'a push job for each message');
    is(scalar(grep { $_ != 1 } values %n), 0, '... once each');
    # getJobs lists prioritized jobs lowest score first: the order a worker takes them
    is_deeply([map { $_->{data}{data}{messageId} } @push], \@sent, '... queued in the order sent');
    is(scalar @{ $list->{email} }, 2, 'the cancellation\'s two emails');
    $sub->disconnect;
}

done_ahava();
