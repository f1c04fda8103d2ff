package Ahava::Visits;

# Helpers for the visit-mutation tests (t/1*.t), on top of Ahava::Test:
#
#   new_user(role => 'NURSE', active => 0)        -> id of a fresh user
#   new_visit(status => 'EN_ROUTE', patient => $id, nurse => $id,
#             doctor => $id|undef, actualStart => 'SQL expr', ...) -> id
#   new_visits([{...}, {...}])                    -> ids, one psql call
#   visit_row($id)                                -> { column => text }
#   mutate($action, $visitId, as => 'nurse1', body => {...} | raw => '...',
#          content_type => '...')                 -> Ahava::Test::Response
#   mutation_request($action, $visitId, ...)      -> the raw HTTP request
#   node_decrypt([$ciphertext, ...], key => $b64) -> plaintexts (Node's
#                                  crypto; undef where authentication fails)
#   RowLock->new($visitId, ...) / ->release       a row lock held by psql
#   Sub->new($port, 'ahava:user:*') / ->wait_for(...) a raw RESP subscriber
#
# Visits get fresh bookings (bookingId is unique); every row sets updatedAt.

use strict;
use warnings;

use Carp qw(croak);
use Exporter 'import';
use JSON::PP ();
use Ahava::Test;

our @EXPORT = qw(new_user new_visit new_visits visit_row mutate
                 mutation_request json_text %ACTION @STATUSES sql_quote
                 TS_RE node_decrypt);

our @STATUSES = qw(SCHEDULED EN_ROUTE ARRIVED IN_PROGRESS COMPLETED CANCELLED);

# action => [method, path suffix]
our %ACTION = (
    'status'        => ['PATCH', 'status'],
    'location'      => ['POST',  'location'],
    'nurse-report'  => ['POST',  'nurse-report'],
    'doctor-review' => ['POST',  'doctor-review'],
    'cancel'        => ['POST',  'cancel'],
    'assign-nurse'  => ['POST',  'assign-nurse'],
    'assign-doctor' => ['POST',  'assign-doctor'],
);

use constant TS_RE => qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

my $JSON = JSON::PP->new->utf8->canonical->allow_nonref;
my $SEQ = 0;

sub json_text { $JSON->encode($_[0]) }

sub sql_quote {
    my ($s) = @_;
    return 'NULL' unless defined $s;
    $s =~ s/'/''/g;
    return "'$s'";
}

sub _id { sprintf('c%s%0*d', $_[0], 24 - length $_[0], ++$SEQ) }

# A user of a role; active => 0 for an inactive one.  Returns the id.
sub new_user {
    my (%o) = @_;
    my $role = $o{role} or croak 'new_user: role';
    my $id = $o{id} // _id('tuser');
    my $active = (defined $o{active} && !$o{active}) ? 'false' : 'true';
    psql(sprintf(q{INSERT INTO users (id, email, "firstName", "lastName", role,
        "isActive", "updatedAt") VALUES (%s, %s, %s, %s, '%s', %s, LOCALTIMESTAMP(3))},
        sql_quote($id), sql_quote("$id\@test.invalid"),
        sql_quote($o{firstName} // 'Test'), sql_quote($o{lastName} // $role),
        $role, $active));
    return $id;
}

# Defaults: patient1 / nurse1 / the doctor, SCHEDULED, now-ish times.
# Values of actualStart, actualEnd, updatedAt, gps are SQL expressions;
# nurseReport, doctorReview are text (quoted here).
sub _visit_sql {
    my ($o) = @_;
    my $vid = $o->{id} // _id('tvisit');
    my $bid = _id('tbook');
    my $patient = $o->{patient} // $ID{patient1};
    my $nurse   = $o->{nurse}   // $ID{nurse1};
    my $doctor  = exists $o->{doctor} ? $o->{doctor} : $ID{doctor};
    my $status  = $o->{status}  // 'SCHEDULED';
    my $sql = sprintf(q{INSERT INTO bookings (id, "patientId", "nurseId", "doctorId",
        "encryptedAddress", "scheduledDate", "paymentMethod", "amountInCents", "updatedAt")
        VALUES (%s, %s, %s, %s, 'test-address', LOCALTIMESTAMP(3) + interval '1 day',
        'CARD', 50000, LOCALTIMESTAMP(3));
INSERT INTO visits (id, "bookingId", "nurseId", "doctorId", status, "scheduledStart",
        "actualStart", "actualEnd", "gpsCoordinates", "nurseReport", "doctorReview",
        "doctorRating", "createdAt", "updatedAt")
        VALUES (%s, %s, %s, %s, '%s', LOCALTIMESTAMP(3) + interval '1 day', %s, %s, %s,
        %s, %s, %s, LOCALTIMESTAMP(3) - interval '1 hour', %s);
},
        sql_quote($bid), sql_quote($patient), sql_quote($nurse), sql_quote($doctor),
        sql_quote($vid), sql_quote($bid), sql_quote($nurse), sql_quote($doctor), $status,
        $o->{actualStart} // 'NULL', $o->{actualEnd} // 'NULL',
        $o->{gps} // q{'[]'::jsonb},
        sql_quote($o->{nurseReport}), sql_quote($o->{doctorReview}),
        $o->{doctorRating} // 'NULL',
        $o->{updatedAt} // q{TIMESTAMP '2020-01-01 00:00:00'});
    return ($vid, $sql);
}

sub new_visits {
    my ($specs) = @_;
    my (@ids, $sql);
    for my $s (@$specs) {
        my ($id, $q) = _visit_sql($s);
        push @ids, $id;
        $sql .= $q;
    }
    psql("BEGIN;\n$sql\nCOMMIT;") if @ids;
    return @ids;
}

sub new_visit {
    my (%o) = @_;
    my ($id) = new_visits([\%o]);
    return $id;
}

# The visit's row (+ the booking's patientId); times as ISO text.
sub visit_row {
    my ($id) = @_;
    my @cols = qw(id status nurseId doctorId patientId actualStart actualEnd
                  updatedAt gpsCoordinates nurseReport doctorReview doctorRating);
    my $iso = sub { qq{to_char(v."$_[0]", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')} };
    my $rows = psql(sprintf(q{SELECT v.id, v.status, v."nurseId", v."doctorId",
        b."patientId", %s, %s, %s, v."gpsCoordinates"::text, v."nurseReport",
        v."doctorReview", v."doctorRating" FROM visits v JOIN bookings b
        ON b.id = v."bookingId" WHERE v.id = %s},
        $iso->('actualStart'), $iso->('actualEnd'), $iso->('updatedAt'), sql_quote($id)));
    return undef unless @$rows;
    my %h;
    @h{@cols} = @{ $rows->[0] };
    return \%h;
}

sub _path {
    my ($action, $vid) = @_;
    my $a = $ACTION{$action} or croak "unknown action '$action'";
    return ($a->[0], "/api/visits/$vid/$a->[1]");
}

sub _headers {
    my (%o) = @_;
    my %h = %{ $o{headers} || {} };
    if (defined $o{as}) {
        my $uid = exists $ID{ $o{as} } ? $ID{ $o{as} } : $o{as};
        $h{Authorization} = 'Bearer ' . token($uid);
    } elsif (defined $o{token}) {
        $h{Authorization} = "Bearer $o{token}";
    }
    $h{'Content-Type'} = $o{content_type} // 'application/json'
        unless exists $h{'Content-Type'} || (defined $o{content_type} && $o{content_type} eq '');
    return \%h;
}

sub _body {
    my (%o) = @_;
    return $o{raw} if exists $o{raw};
    return json_text($o{body} // {});
}

# mutate('status', $vid, as => 'nurse1', body => { status => 'EN_ROUTE' })
sub mutate {
    my ($action, $vid, %o) = @_;
    my ($method, $path) = _path($action, $vid);
    my %args = (headers => _headers(%o), body => _body(%o));
    $args{nginx} = $o{nginx} if $o{nginx};
    $args{port} = $o{port} if $o{port};
    return response($method, $path, %args);
}

# The same request as raw bytes (for Ahava::Test::HTTP::Conn->open_raw)
sub mutation_request {
    my ($action, $vid, %o) = @_;
    my ($method, $path) = _path($action, $vid);
    return Ahava::Test::HTTP::build_request($method, $path,
        headers => _headers(%o), body => _body(%o));
}

# SPEC §10 read by Node's crypto: v2:<iv b64>:<tag b64>:<ct b64> or the
# legacy hex form, AES-256-GCM under the base64 key.
sub node_decrypt {
    my ($cts, %o) = @_;
    my $script = <<'_JS_';
const crypto = require('crypto');
let input = '';
process.stdin.on('data', (d) => input += d);
process.stdin.on('end', () => {
    const { key, cts } = JSON.parse(input);
    const k = Buffer.from(key, 'base64');
    const out = cts.map((ct) => {
        try {
            let parts = ct.split(':'), enc = 'hex';
            if (parts[0] === 'v2') { parts = parts.slice(1); enc = 'base64'; }
            const [iv, tag, data] = parts.map((p) => Buffer.from(p, enc));
            const d = crypto.createDecipheriv('aes-256-gcm', k, iv);
            d.setAuthTag(tag);
            return Buffer.concat([d.update(data), d.final()]).toString('utf8');
        } catch (e) { return null; }
    });
    process.stdout.write(JSON.stringify(out));
});
_JS_
    my $in = $JSON->encode({ key => $o{key} // Ahava::Test::env_value('ENCRYPTION_KEY'),
                             cts => $cts });
    my ($rc, $out) = run_capture(['node', '-e', $script], stdin => $in);
    croak "node failed ($rc): $out" if $rc;
    return @{ $JSON->decode($out) };
}


package Ahava::Visits::RowLock;

# "BEGIN; SELECT ... FROM visits WHERE id IN (...) FOR UPDATE" held in a
# separate psql session until ->release (COMMIT, or ->release(sql => ...)
# to run more statements in that transaction first).

use strict;
use warnings;
use Carp qw(croak);
use POSIX ();
use Ahava::Test;

my $seq = 0;

sub new {
    my ($class, @ids) = @_;
    my $app = "ahava-test-rowlock-$$-" . ++$seq;
    my $pid = open(my $fh, '|-');
    croak "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDOUT, '>', '/dev/null';
        $ENV{PGAPPNAME} = $app;
        no warnings 'exec';
        exec 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d',
             Ahava::Test::env_value('DATABASE_URL');
        POSIX::_exit(127);
    }
    my $old = select $fh; $| = 1; select $old;
    my $list = join ', ', map { Ahava::Visits::sql_quote($_) } @ids;
    print {$fh} "BEGIN;\nSELECT id FROM visits WHERE id IN ($list) FOR UPDATE;\n";
    my $self = bless { fh => $fh, pid => $pid, app => $app }, $class;
    # FOR UPDATE gives the transaction an xid; idle in transaction = done
    poll_until(10, sub {
        psql_value(qq{SELECT count(*) FROM pg_stat_activity
            WHERE application_name = '$app' AND backend_xid IS NOT NULL
              AND state = 'idle in transaction'})
    }) or do { $self->release; croak "the row lock was not taken" };
    return $self;
}

sub release {
    my ($self, %o) = @_;
    return if $self->{released}++;
    print { $self->{fh} } "$o{sql}\n" if defined $o{sql};
    print { $self->{fh} } "COMMIT;\n";
    close $self->{fh};
    return 1;
}

sub DESTROY { $_[0]->release unless $_[0]{released} }


package Ahava::Visits::Sub;

# A minimal RESP client that PSUBSCRIBEs and collects the pmessages:
#   my $s = Ahava::Visits::Sub->new($port, 'ahava:user:*');
#   my @m = $s->wait_for(3, 5);          # at least 3 messages, 5 s deadline
#   $s->sync;                        # everything published so far is read
#   $s->take;                        # and returned (and forgotten)
# Each message: { pattern, channel, payload (bytes), json (decoded) }.

use strict;
use warnings;
use Carp qw(croak);
use IO::Socket::INET;
use IO::Select;
use JSON::PP ();
use Time::HiRes qw(time);

my $J = JSON::PP->new->utf8;
my $marker_seq = 0;

sub new {
    my ($class, $port, @patterns) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or croak "connect to Redis on $port: $!";
    $s->blocking(0);
    my $self = bless { sock => $s, port => $port, buf => '', msgs => [],
                       acks => 0 }, $class;
    $self->_send('PSUBSCRIBE', @patterns, "ahava-test-marker:$$");
    my $want = @patterns + 1;
    $self->_pump(sub { $self->{acks} >= $want }, 5)
        or croak "PSUBSCRIBE was not acknowledged";
    return $self;
}

sub _send {
    my ($self, @args) = @_;
    my $cmd = '*' . @args . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
    my $sock = $self->{sock};
    while (length $cmd) {
        my $n = syswrite($sock, $cmd);
        if (defined $n) { substr($cmd, 0, $n) = '' }
        else { IO::Select->new($sock)->can_write(1) }
    }
}

# one RESP value from the start of $self->{buf}, or undef if incomplete
sub _parse {
    my ($self, $pos) = @_;
    my $b = \$self->{buf};
    my $eol = index($$b, "\r\n", $pos);
    return if $eol < 0;
    my $type = substr($$b, $pos, 1);
    my $line = substr($$b, $pos + 1, $eol - $pos - 1);
    my $next = $eol + 2;
    if ($type eq '+' || $type eq '-' || $type eq ':') {
        return ([$type, $line], $next);
    }
    if ($type eq '$') {
        return ([undef], $next) if $line < 0;
        return if length($$b) < $next + $line + 2;
        return (substr($$b, $next, $line), $next + $line + 2);
    }
    if ($type eq '*') {
        my @items;
        for (1 .. $line) {
            my ($v, $n) = $self->_parse($next) or return;
            push @items, $v;
            $next = $n;
        }
        return (\@items, $next);
    }
    croak "bad RESP from Redis: " . substr($$b, $pos, 40);
}

sub _read_some {
    my ($self, $timeout) = @_;
    my $sock = $self->{sock};
    return 0 unless IO::Select->new($sock)->can_read($timeout);
    my $n = sysread($sock, my $chunk, 65536);
    croak "Redis closed the subscriber connection" if defined $n && $n == 0;
    return 0 unless $n;
    $self->{buf} .= $chunk;
    while (1) {
        my ($v, $next) = $self->_parse(0);
        last unless defined $next;
        substr($self->{buf}, 0, $next) = '';
        next unless ref $v eq 'ARRAY' && !ref $v->[0];
        if ($v->[0] eq 'psubscribe') {
            $self->{acks}++;
        } elsif ($v->[0] eq 'pmessage') {
            if ($v->[2] =~ /^ahava-test-marker:/) {
                $self->{markers}{ $v->[3] } = 1;
                next;
            }
            my $m = { pattern => $v->[1], channel => $v->[2], payload => $v->[3] };
            $m->{json} = eval { $J->decode($v->[3]) };
            push @{ $self->{msgs} }, $m;
        }
    }
    return 1;
}

sub _pump {
    my ($self, $cond, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        return 1 if $cond->();
        my $left = $deadline - time;
        return 0 if $left <= 0;
        $self->_read_some($left > 0.2 ? 0.2 : $left);
    }
}

# Waits until at least $n messages are held (or $timeout s); returns them.
sub wait_for {
    my ($self, $n, $timeout) = @_;
    $self->_pump(sub { @{ $self->{msgs} } >= $n }, $timeout // 5);
    return @{ $self->{msgs} };
}

# Publishes a marker on another connection and reads until it arrives:
# whatever Redis delivered to us before it has then been read.
sub sync {
    my ($self, $timeout) = @_;
    my $tag = "m$$-" . ++$marker_seq;
    my $p = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port},
                                  Proto => 'tcp', Timeout => 5)
        or croak "connect to Redis: $!";
    print {$p} "*3\r\n\$7\r\nPUBLISH\r\n\$" . length("ahava-test-marker:$$")
               . "\r\nahava-test-marker:$$\r\n\$" . length($tag) . "\r\n$tag\r\n";
    my $ok = $self->_pump(sub { $self->{markers}{$tag} }, $timeout // 5);
    CORE::close($p);
    return $ok;
}

sub take {
    my ($self) = @_;
    my @m = @{ $self->{msgs} };
    $self->{msgs} = [];
    return @m;
}

sub disconnect { CORE::close($_[0]{sock}) }

1;
