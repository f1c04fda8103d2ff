# Visit mutations × callers (SPEC §3, §5): who may do what to which visit.
# ONE table drives it: every mutation endpoint × every caller (a participant
# of each role and a non-participant of each role) × every kind of target
# (the caller's own visit, someone else's, a nonexistent id, a malformed id).
# Each cell gets a fresh visit in a state where the action is allowed and a
# valid body, so only the caller and the target decide the answer:
# 404 NOT_FOUND for a visit the caller may not see (the same body as for a
# nonexistent one), 403 FORBIDDEN for a participant whose role may not,
# 200 with the visit for the allowed ones.  Cells run in random order.
use strict;
use warnings;
use Test::More;
use List::Util qw(shuffle);
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

# --- the table ---------------------------------------------------------------
# Callers: P N D A are participants of "own" visits (patient1, nurse1, the
# doctor; A is the seed admin), P' N' D' A' are users of those roles created
# here that take part in no visit.  Targets: own = a visit of patient1 /
# nurse1 / the doctor; other = a visit of patient2 / nurse2 / a second doctor;
# missing = a well-formed id of no visit; malformed = an id that cannot be one.
my @CALLERS = qw(P N D A P' N' D' A');
my $TABLE = <<'_T_';
# action         target     P   N   D   A   P'  N'  D'  A'
status           own       403 200 403 200 404 404 404 200
status           other     404 404 404 200 404 404 404 200
status           missing   404 404 404 404 404 404 404 404
status           malformed 404 404 404 404 404 404 404 404
location         own       403 200 403 403 404 404 404 403
location         other     404 404 404 403 404 404 404 403
location         missing   404 404 404 404 404 404 404 404
location         malformed 404 404 404 404 404 404 404 404
nurse-report     own       403 200 403 403 404 404 404 403
nurse-report     other     404 404 404 403 404 404 404 403
nurse-report     missing   404 404 404 404 404 404 404 404
nurse-report     malformed 404 404 404 404 404 404 404 404
doctor-review    own       403 403 200 200 404 404 404 200
doctor-review    other     404 404 404 200 404 404 404 200
doctor-review    missing   404 404 404 404 404 404 404 404
doctor-review    malformed 404 404 404 404 404 404 404 404
cancel           own       200 403 403 200 404 404 404 200
cancel           other     404 404 404 200 404 404 404 200
cancel           missing   404 404 404 404 404 404 404 404
cancel           malformed 404 404 404 404 404 404 404 404
assign-nurse     own       403 403 403 200 404 404 404 200
assign-nurse     other     404 404 404 200 404 404 404 200
assign-nurse     missing   404 404 404 404 404 404 404 404
assign-nurse     malformed 404 404 404 404 404 404 404 404
assign-doctor    own       403 403 403 200 404 404 404 200
assign-doctor    other     404 404 404 200 404 404 404 200
assign-doctor    missing   404 404 404 404 404 404 404 404
assign-doctor    malformed 404 404 404 404 404 404 404 404
_T_

my @CELLS;
for my $line (split /\n/, $TABLE) {
    next if $line =~ /^\s*(#|$)/;
    my ($action, $target, @want) = split ' ', $line;
    die "bad table row: $line" unless @want == @CALLERS && $ACTION{$action};
    push @CELLS, map { { action => $action, target => $target, caller => $CALLERS[$_],
                         want => $want[$_] } } 0 .. $#CALLERS;
}

my @TARGETS = qw(own other missing malformed);
is(scalar @CELLS, 7 * 8 * 4, 'the table has 7 actions x 8 callers x 4 targets = 224 cells');
{
    my %seen;
    $seen{"$_->{action}|$_->{target}|$_->{caller}"}++ for @CELLS;
    my @missing = grep { !$seen{$_} } map { my $a = $_; map { my $t = $_; map { "$a|$t|$_" } @CALLERS } @TARGETS } sort keys %ACTION;
    ok(!@missing && !grep({ $_ != 1 } values %seen), 'every (action, target, caller) appears exactly once')
        or diag("missing: @missing");
}

# The table against the SPEC rules, stated once more as code: a typo in one
# of them shows here.
{
    my %may = (                         # role letters that may act on a visit they see
        'status' => 'NA', 'location' => 'N', 'nurse-report' => 'N',
        'doctor-review' => 'DA', 'cancel' => 'PA', 'assign-nurse' => 'A',
        'assign-doctor' => 'A',
    );
    my @bad;
    for my $c (@CELLS) {
        my ($role, $outsider) = $c->{caller} =~ /^(\w)('?)$/;
        my $sees = $c->{target} =~ /^(?:own|other)$/
                   && ($role eq 'A' || ($c->{target} eq 'own' && !$outsider));
        my $rule = !$sees ? 404 : index($may{ $c->{action} }, $role) >= 0 ? 200 : 403;
        push @bad, "$c->{action} $c->{target} $c->{caller}: table $c->{want}, rule $rule"
            if $rule != $c->{want};
    }
    ok(!@bad, 'the table agrees with the SPEC rules') or diag(join "\n", @bad);
}

# --- the people ----------------------------------------------------------------
my %WHO = (
    P => $ID{patient1}, N => $ID{nurse1}, D => $ID{doctor}, A => $ID{admin},
    "P'" => new_user(role => 'PATIENT'), "N'" => new_user(role => 'NURSE'),
    "D'" => new_user(role => 'DOCTOR'),  "A'" => new_user(role => 'ADMIN'),
);
my $DOCTOR2 = new_user(role => 'DOCTOR');   # the doctor of "other" visits
my $NURSE3  = new_user(role => 'NURSE');    # assigned by assign-nurse
my $DOCTOR3 = new_user(role => 'DOCTOR');   # assigned by assign-doctor
my %PARTY = (
    own   => { patient => $ID{patient1}, nurse => $ID{nurse1}, doctor => $ID{doctor} },
    other => { patient => $ID{patient2}, nurse => $ID{nurse2}, doctor => $DOCTOR2 },
);

# --- per action: the state it is allowed in, a valid body, its effect --------------
my ($REPORT_CT) = node_encrypt(['the nurse report of a matrix visit']);
my %SETUP = (
    'status'        => [{ status => 'SCHEDULED' }, { status => 'EN_ROUTE' },
                        sub { $_[0]{status} eq 'EN_ROUTE' }],
    'location'      => [{ status => 'EN_ROUTE' }, { lat => -26.2041, lng => 28.0473 },
                        sub { ($_[0]{gpsCoordinates} // '') =~ /-26\.2041/ }],
    'nurse-report'  => [{ status => 'IN_PROGRESS' }, { nurseReport => 'All well.' },
                        sub { ($_[0]{nurseReport} // '') =~ /^v2:/ }],
    'doctor-review' => [{ status => 'COMPLETED', nurseReport => $REPORT_CT },
                        { doctorReview => 'Reviewed.', doctorRating => 4 },
                        sub { ($_[0]{doctorReview} // '') eq 'Reviewed.' && $_[0]{doctorRating} == 4 }],
    'cancel'        => [{ status => 'SCHEDULED' }, { reason => 'changed plans' },
                        sub { $_[0]{status} eq 'CANCELLED' }],
    'assign-nurse'  => [{ status => 'SCHEDULED' }, { nurseId => $NURSE3 },
                        sub { $_[0]{nurseId} eq $NURSE3 }],
    'assign-doctor' => [{ status => 'SCHEDULED' }, { doctorId => $DOCTOR3 },
                        sub { ($_[0]{doctorId} // '') eq $DOCTOR3 }],
);

# a fresh visit for every cell that names one, all in one statement
{
    my @need = grep { $_->{target} =~ /^(?:own|other)$/ } @CELLS;
    my @ids = new_visits([ map { { %{ $SETUP{ $_->{action} }[0] }, %{ $PARTY{ $_->{target} } } } } @need ]);
    $need[$_]{visit} = $ids[$_] for 0 .. $#need;
}
my @MALFORMED = ('bad.id', 'c' x 65, 'a%20b', "x'or'1", '%C3%A9t%C3%A9', 'a%2Fb');
my $m = 0;
for my $c (@CELLS) {
    $c->{visit} = 'cnosuchvisit0000000000001' if $c->{target} eq 'missing';
    $c->{visit} = $MALFORMED[$m++ % @MALFORMED] if $c->{target} eq 'malformed';
}

# --- run every cell ---------------------------------------------------------------
my $NOT_FOUND = mutate('status', 'cnosuchvisit0000000000002', as => 'admin',
                       body => { status => 'EN_ROUTE' })->raw;
my (%tally, @unchanged);
for my $c (shuffle @CELLS) {
    my $name = "$c->{action} on $c->{target} visit by $c->{caller}";
    my $r = mutate($c->{action}, $c->{visit}, as => $WHO{ $c->{caller} },
                   body => $SETUP{ $c->{action} }[1]);
    $tally{ $c->{want} }++;
    if ($c->{want} == 200) {
        api_ok($r, "$name: 200") or next;
        my $d = $r->json->{data} || {};
        # the location's answer is the point ({visitId, ...}), the others' the visit
        my $id = $c->{action} eq 'location' ? $d->{visitId} : $d->{id};
        ok(($id // '') eq $c->{visit} && $SETUP{ $c->{action} }[2]->(visit_row($c->{visit})),
           "$name: data names the visit, and the change is stored") or diag($r->dump);
    } elsif ($c->{want} == 403) {
        api_error_is($r, 403, 'FORBIDDEN', "$name: 403 FORBIDDEN");
        push @unchanged, $c->{visit};
    } else {
        api_error_is($r, 404, 'NOT_FOUND', "$name: 404 NOT_FOUND");
        is($r->raw, $NOT_FOUND, "$name: the same body as a nonexistent visit")
            if $c->{target} ne 'malformed';
        push @unchanged, $c->{visit} if $c->{target} =~ /^(?:own|other)$/;
    }
}
is_deeply(\%tally, { 200 => 25, 403 => 24, 404 => 175 },
          'cells per outcome: 25 x 200, 24 x 403, 175 x 404');

# nothing refused changed anything
{
    my $list = join ',', map { sql_quote($_) } @unchanged;
    is(psql_value(qq{SELECT count(*) FROM visits WHERE id IN ($list)
                     AND "updatedAt" <> TIMESTAMP '2020-01-01 00:00:00'}), 0,
       scalar(@unchanged) . ' refused cells on real visits: none of them changed');
}

# every 403 is an authorization denial in the log and in audit_logs
error_log_like(qr/security event ACCESS_DENIED on visit/, 'ACCESS_DENIED is logged');
ok(poll_until(10, sub { psql_value(q{SELECT count(*) FROM audit_logs
                                     WHERE action = 'ACCESS_DENIED'}) >= 24 }),
   'audit_logs holds an ACCESS_DENIED row for each of the 24 refusals');

done_ahava();
