package Ahava::Test::WS;

# WebSocket clients for the /ws tests (t/5*-ws-*.t).
#
# 1. A real client: Node's `ws` package (t/lib/ws-client.js), one Node
#    process (the "hub") holding any number of sockets, driven over
#    stdin/stdout with JSON lines.  Every wait reads the events Node prints,
#    with a deadline; nothing waits by sleeping.
#
#      my $c = ws_connect(as => 'patient1');              # Authorization header
#      my $c = ws_connect(as => 'nurse1', via => 'query'); # ?token=
#      my $c = ws_connect(token => $jwt, via => 'protocol'); # bearer, <jwt>
#      $c->opened; $c->status; $c->header('sec-websocket-accept');
#      $c->response;        # { status, headers, body, json } when not upgraded
#      my $f = $c->next_message(5);   # the next JSON frame (a hash), or undef
#      my ($pong, @before) = $c->ping_roundtrip(5);
#      $c->send_json({ type => 'PING' });  $c->close(1000);  $c->wait_close(5);
#
# 2. A raw client over IO::Socket::INET for the protocol's edge cases:
#    the handshake by hand, hand-built frames (mask or not, any opcode, RSV
#    bits, fragments, lying lengths), the server's frames parsed.
#
#      my $r = ws_raw(as => 'patient1');    # Ahava::Test::WS::Raw, handshake done
#      $r->status;  $r->header('upgrade');
#      $r->send_frame(opcode => 1, payload => '{"type":"PING"}', fin => 1,
#                     mask => 1, rsv => 0);
#      my $f = $r->read_frame(5);  # { opcode, fin, rsv, masked, payload,
#                                  #   code, reason } | { eof => 1 } | undef
#      my ($close, @before) = $r->expect_close(5);
#
# 3. Helpers: ws_url(...), worker_pids($nginx), vm_rss($pid), frame(...).

use strict;
use warnings;

use Carp qw(croak);
use Exporter 'import';
use JSON::PP ();
use MIME::Base64 qw(encode_base64 decode_base64);
use Digest::SHA qw(sha1_base64);
use Ahava::Test ();
use Ahava::Test::Util qw(repo_root slurp poll_until process_alive);

our @EXPORT = qw(ws_connect ws_raw ws_url ws_token_args worker_pids vm_rss
                 ws_config ws_frame ws_accept_of tcp_state tcp_owner_pid tcp_send_queue redis_cmd
                 redis_numsub);

our $JSON_LINE = JSON::PP->new->utf8->canonical;    # the pipe to Node: bytes
our $JSON_TEXT = JSON::PP->new->canonical;          # frames: already characters
our $JSON_BYTES = JSON::PP->new->utf8->canonical;   # raw frames: bytes

sub _port_of {
    my (%o) = @_;
    return $o{port} if $o{port};
    my $n = $o{nginx} || $Ahava::Test::DEFAULT_NGINX or croak 'no nginx started';
    return $n->port;
}

sub _uid { exists $Ahava::Test::ID{ $_[0] } ? $Ahava::Test::ID{ $_[0] } : $_[0] }

sub _uri_escape {
    my ($s) = @_;
    utf8::encode($s) if utf8::is_utf8($s);
    $s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

# The token of as => 'name'|id or token => $jwt (undef: none)
sub _token_of {
    my (%o) = @_;
    return $o{token} if exists $o{token};
    return Ahava::Test::token(_uid($o{as})) if defined $o{as};
    return undef;
}

# ws_url(path => '/ws', query => 'since=...' | [k => v, ...], port/nginx)
sub ws_url {
    my (%o) = @_;
    my $path = $o{path} // '/ws';
    my $q = _query(%o);
    return 'ws://127.0.0.1:' . _port_of(%o) . $path . (length $q ? "?$q" : '');
}

sub _query {
    my (%o) = @_;
    my @q;
    if (ref $o{query} eq 'ARRAY') {
        my @a = @{ $o{query} };
        while (my ($k, $v) = splice(@a, 0, 2)) {
            push @q, defined $v ? _uri_escape($k) . '=' . _uri_escape($v) : $k;
        }
    } elsif (defined $o{query} && length $o{query}) {
        push @q, $o{query};
    }
    return join '&', @q;
}

# The token carriers: (headers, protocols, query pairs) for
# via => 'header' (default) | 'query' | 'protocol'
sub ws_token_args {
    my (%o) = @_;
    my $tok = _token_of(%o);
    my $via = $o{via} // 'header';
    my (%h, @protocols, @query);
    if (defined $tok) {
        if ($via eq 'header')      { $h{Authorization} = "Bearer $tok" }
        elsif ($via eq 'query')    { @query = (token => $tok) }
        elsif ($via eq 'protocol') { @protocols = ('bearer', $tok) }
        else { croak "unknown token carrier '$via'" }
    }
    return (\%h, \@protocols, \@query);
}

# ws_connect(as => | token =>, via => 'header'|'query'|'protocol',
#            query => [k => v] | 'raw', path => '/ws', headers => {...},
#            protocols => [...], auto_pong => 1, deflate => 1,
#            port/nginx, hub => $hub, wait => 1, timeout => 10)
sub ws_connect {
    return Ahava::Test::WS::Client->connect(@_);
}

# The http{} configuration of the /ws tests: the module's directives and
# the API server with /ws in it.  ws => directives of `location = /ws`,
# listen => options of its listen, server => more lines in the server,
# http => lines before the server, after => more servers.
sub ws_config {
    my (%o) = @_;
    my $ws = join ' ', 'ahava_ws;', $o{ws} // ();
    my $listen = join ' ', '127.0.0.1:$TEST_NGINX_SERVER_PORT', $o{listen} // ();
    my $server = $o{server} // '';
    return <<"_EOC_" . ($o{after} // '');
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    env:ENCRYPTION_KEY;
@{[ $o{http} // '' ]}
server {
    listen       $listen;
    server_name  _;
    client_max_body_size  64k;
    error_page 400 401 403 404 405 413 414 429 494 500 501 502 503 504 505
               /_ahava_error;
$server
    location = /health { ahava_health; }
    location = /ws { $ws }
    location /api/visits { ahava_visits; }
    location /api/messages { ahava_messages; }
    location / { return 404; }
    location = /_ahava_error { internal; ahava_error_page; }
}
_EOC_
}

sub ws_raw {
    return Ahava::Test::WS::Raw->connect(@_);
}

# pids of the workers of an nginx (children of its master), sorted
sub worker_pids {
    my ($n) = @_;
    my $master = ref $n ? $n->pid : $n;
    return () unless $master;
    my @w;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my $s = slurp($stat) // next;
        my ($pid, $ppid) = $s =~ /^(\d+) \(.*\) \S (\d+)/s or next;
        push @w, $pid if $ppid == $master;
    }
    return sort { $a <=> $b } @w;
}

# VmRSS of a process in KiB (undef when it is gone)
sub vm_rss {
    my ($pid) = @_;
    my $s = slurp("/proc/$pid/status") // return undef;
    my ($kb) = $s =~ /^VmRSS:\s+(\d+)\s+kB/m;
    return $kb;
}

# The TCP state (ss's name: ESTAB, FIN-WAIT-1, ...) of the server's side of
# a connection 127.0.0.1:$server_port <-> 127.0.0.1:$client_port; undef
# when the server holds no such socket any more.
sub tcp_state {
    my ($server_port, $client_port) = @_;
    my ($rc, $out) = Ahava::Test::Util::run_capture(['ss', '-Htan',
        'src', "127.0.0.1:$server_port", 'dst', "127.0.0.1:$client_port"]);
    return undef if $rc;
    my ($state) = $out =~ /^(\S+)/m;
    return $state;
}

# The bytes the server's side of a connection has not got acknowledged
# (ss's Send-Q), or undef when there is no such connection.
sub tcp_send_queue {
    my ($server_port, $client_port) = @_;
    my ($rc, $out) = Ahava::Test::Util::run_capture(['ss', '-Htn', 'state', 'established',
        'src', "127.0.0.1:$server_port", 'dst', "127.0.0.1:$client_port"]);
    return undef if $rc;
    my ($q) = $out =~ /^\s*\d+\s+(\d+)/m;
    return $q;
}

# The pid of the process (the nginx worker) holding the server's side of a
# connection (ss -p), or undef.
sub tcp_owner_pid {
    my ($server_port, $client_port) = @_;
    my ($rc, $out) = Ahava::Test::Util::run_capture(['ss', '-Htnp', 'state', 'established',
        'src', "127.0.0.1:$server_port", 'dst', "127.0.0.1:$client_port"]);
    return undef if $rc;
    my ($pid) = $out =~ /pid=(\d+)/;
    return $pid;
}

# One Redis command by redis-cli against the test's Redis: its output lines
sub redis_cmd {
    my (@args) = @_;
    my ($port) = (Ahava::Test::env_value('REDIS_URL') // '') =~ m{//(?:[^@/]*@)?[^:/]+:(\d+)}
        or croak 'no Redis port in REDIS_URL';
    my ($rc, $out) = Ahava::Test::Util::run_capture(['redis-cli', '-p', $port, @args]);
    croak "redis-cli @args failed ($rc): $out" if $rc;
    return split /\n/, $out;
}

# subscribers (connections) of the channel ahava:user:<id>
sub redis_numsub {
    my ($user) = @_;
    my (undef, $n) = redis_cmd('PUBSUB', 'NUMSUB', 'ahava:user:' . _uid($user));
    return $n;
}

sub ws_accept_of {
    my ($key) = @_;
    my $a = sha1_base64($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11');
    $a .= '=' while length($a) % 4;
    return $a;
}

# ws_frame(opcode => 1, payload => $bytes, fin => 1, rsv => 0 (bits 0-7:
#          RSV1=4, RSV2=2, RSV3=1), mask => 1, key => 4 bytes,
#          len => a lying length, len_form => 7|16|64 (non-minimal forms))
sub ws_frame {
    my (%o) = @_;
    my $payload = $o{payload} // '';
    utf8::is_utf8($payload) and croak 'ws_frame: payload must be bytes';
    my $fin = $o{fin} // 1;
    my $op = $o{opcode} // 1;
    my $b0 = ($fin ? 0x80 : 0) | ((($o{rsv} // 0) & 7) << 4) | ($op & 0x0f);
    my $len = $o{len} // length $payload;
    my $mask = $o{mask} // 1;
    my $form = $o{len_form} // ($len < 126 ? 7 : $len < 65536 ? 16 : 64);
    my $h = chr($b0);
    my $mbit = $mask ? 0x80 : 0;
    if ($form == 7)     { $h .= chr($mbit | $len) }
    elsif ($form == 16) { $h .= chr($mbit | 126) . pack('n', $len) }
    else                { $h .= chr($mbit | 127) . pack('Q>', $len) }
    return $h . $payload unless $mask;
    my $key = $o{key} // pack('N', int rand 2**32);
    my $masked = $payload ^ substr($key x (int(length($payload) / 4) + 1), 0, length $payload);
    return $h . $key . $masked;
}


package Ahava::Test::WS::Hub;

# One Node process (t/lib/ws-client.js) and its sockets.

use strict;
use warnings;

use Carp qw(croak);
use File::Temp qw(tempfile);
use IO::Handle;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time);
use Ahava::Test::Util qw(repo_root slurp process_alive poll_until);

my $SHARED;
my @HUBS;

sub shared {
    $SHARED = undef if $SHARED && $SHARED->{dead};
    return $SHARED ||= __PACKAGE__->new;
}

sub new {
    my ($class) = @_;
    my $top = repo_root();
    my $script = "$top/t/lib/ws-client.js";
    -e "$top/t/node_modules/ws/package.json"
        or croak "t/node_modules/ws is missing: run `npm ci` in $top/t"
               . ' (bin/ahava-lib.sh install_node_deps)';
    my (undef, $errfile) = tempfile('ahava-ws-client-XXXXXX', TMPDIR => 1,
                                    SUFFIX => '.log', UNLINK => 1);
    pipe(my $child_in, my $to_child) or croak "pipe: $!";
    pipe(my $from_child, my $child_out) or croak "pipe: $!";
    my $pid = fork;
    croak "fork: $!" unless defined $pid;
    if (!$pid) {
        close $to_child;
        close $from_child;
        open STDIN, '<&', $child_in or POSIX::_exit(126);
        open STDOUT, '>&', $child_out or POSIX::_exit(126);
        open STDERR, '>', $errfile or POSIX::_exit(126);
        no warnings 'exec';
        exec 'node', $script;
        POSIX::_exit(127);
    }
    close $child_in;
    close $child_out;
    $to_child->autoflush(1);
    my $self = bless { pid => $pid, in => $to_child, out => $from_child,
                       buf => '', clients => {}, acks => {}, seq => 0,
                       errfile => $errfile, owner => $$, next_id => 0 }, $class;
    push @HUBS, $self;
    return $self;
}

sub stderr { slurp($_[0]{errfile}) // '' }

sub new_id { 'c' . ++$_[0]{next_id} }

sub register {
    my ($self, $client) = @_;
    $self->{clients}{ $client->{id} } = $client;
}

sub send_cmd {
    my ($self, %cmd) = @_;
    croak 'the ws-client process is gone: ' . $self->stderr if $self->{dead};
    my $seq = ++$self->{seq};
    $cmd{seq} = $seq;
    local $SIG{PIPE} = 'IGNORE';
    print { $self->{in} } $Ahava::Test::WS::JSON_LINE->encode(\%cmd), "\n"
        or do { $self->{dead} = 1; croak "writing to ws-client: $!" };
    return $seq;
}

# sends a command and waits for its ack (or nack); returns the ack event
sub command {
    my ($self, %cmd) = @_;
    my $timeout = delete $cmd{timeout} // 10;
    my $seq = $self->send_cmd(%cmd);
    $self->wait_until($timeout, sub { exists $self->{acks}{$seq} })
        or croak "ws-client did not acknowledge '$cmd{cmd}' in $timeout s: " . $self->stderr;
    my $a = delete $self->{acks}{$seq};
    croak "ws-client refused '$cmd{cmd}': $a->{message}" if $a->{event} eq 'nack';
    return $a;
}

# reads what Node printed (waits up to $timeout for something); 1 if any
sub pump {
    my ($self, $timeout) = @_;
    return 0 if $self->{dead};
    my $sel = IO::Select->new($self->{out});
    return 0 unless $sel->can_read($timeout);
    my $n = sysread($self->{out}, my $chunk, 1 << 16);
    if (!$n) {
        $self->{dead} = 1;
        return 0;
    }
    $self->{buf} .= $chunk;
    while ((my $nl = index($self->{buf}, "\n")) >= 0) {
        my $line = substr($self->{buf}, 0, $nl + 1, '');
        my $ev = eval { $Ahava::Test::WS::JSON_LINE->decode($line) };
        unless (ref $ev eq 'HASH') {
            Test::More::diag("ws-client printed a bad line: $line");
            next;
        }
        if ($ev->{event} eq 'ack' || $ev->{event} eq 'nack') {
            $self->{acks}{ $ev->{seq} } = $ev if defined $ev->{seq};
            next;
        }
        my $c = defined $ev->{id} ? $self->{clients}{ $ev->{id} } : undef;
        if ($c) {
            $c->_event($ev);
        } else {
            Test::More::diag("ws-client event for no socket: $line");
        }
    }
    return 1;
}

# pumps until $cond->() is true or $timeout seconds passed; its last value
sub wait_until {
    my ($self, $timeout, $cond) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        my $left = $deadline - time;
        return $v if $left <= 0 || $self->{dead};
        $self->pump($left > 0.5 ? 0.5 : $left);
    }
}

# reads whatever is there now, without waiting
sub drain {
    my ($self) = @_;
    1 while $self->pump(0);
}

sub stop {
    my ($self) = @_;
    return if $self->{stopped}++ || $self->{owner} != $$;
    local $SIG{PIPE} = 'IGNORE';
    eval { print { $self->{in} } qq({"cmd":"exit"}\n) };
    close $self->{in};
    unless (poll_until(5, sub { waitpid($self->{pid}, POSIX::WNOHANG()) != 0 })) {
        kill 'KILL', $self->{pid};
        waitpid($self->{pid}, 0);
    }
    close $self->{out};
    $self->{dead} = 1;
}

END {
    local $?;
    $_->stop for @HUBS;
}


package Ahava::Test::WS::Client;

# One socket of a hub.  Events are kept in arrival order; the next_* and
# wait_* methods take them out (or wait for them, with a deadline).

use strict;
use warnings;

use Carp qw(croak);
use MIME::Base64 qw(encode_base64 decode_base64);
use Time::HiRes qw(time);

sub connect {
    my ($class, %o) = @_;
    my $hub = $o{hub} || Ahava::Test::WS::Hub->shared;
    my ($h, $protocols, $query) = Ahava::Test::WS::ws_token_args(%o);
    my %headers = (%$h, %{ $o{headers} || {} });
    delete $headers{$_} for grep { !defined $headers{$_} } keys %headers;
    my @protocols = (@$protocols, @{ $o{protocols} || [] });
    my @q = (@$query, ref $o{query} eq 'ARRAY' ? @{ $o{query} } : ());
    my $qs = join '&', grep { length } Ahava::Test::WS::_query(query => \@q),
                                       (ref $o{query} ? () : ($o{query} // ()));
    my $url = Ahava::Test::WS::ws_url(%o, query => $qs);
    my $self = bless { hub => $hub, id => $hub->new_id, events => [], url => $url,
                       name => $o{name} // ($o{as} // 'ws') }, $class;
    $hub->register($self);
    $hub->command(cmd => 'connect', id => $self->{id}, url => $url,
                  headers => \%headers, protocols => \@protocols,
                  autoPong => ($o{auto_pong} // 1) ? JSON::PP::true : JSON::PP::false,
                  perMessageDeflate => ($o{deflate} // 1) ? JSON::PP::true : JSON::PP::false);
    $self->wait_open($o{timeout} // 10) if $o{wait} // 1;
    return $self;
}

sub id   { $_[0]{id} }
sub hub  { $_[0]{hub} }
sub name { $_[0]{name} }
sub url  { $_[0]{url} }

sub _event {
    my ($self, $ev) = @_;
    if ($ev->{event} eq 'message') {
        if ($ev->{binary}) {
            $ev->{bytes} = decode_base64($ev->{data});
        } else {
            $ev->{json} = eval { $Ahava::Test::WS::JSON_TEXT->decode($ev->{data}) };
        }
    }
    if ($ev->{event} eq 'open') {
        $self->{open} = $ev;
    } elsif ($ev->{event} eq 'unexpected-response') {
        $ev->{json} = eval { $Ahava::Test::WS::JSON_TEXT->decode($ev->{body}) };
        $self->{response} = $ev;
    } elsif ($ev->{event} eq 'close') {
        $self->{closed} = $ev;
    } elsif ($ev->{event} eq 'error') {
        push @{ $self->{errors} }, $ev->{message};
    }
    push @{ $self->{events} }, $ev;
}

# waits until the handshake's outcome is known: open, an HTTP answer, or a
# failure; true when open
sub wait_open {
    my ($self, $timeout) = @_;
    $self->{hub}->wait_until($timeout // 10,
        sub { $self->{open} || $self->{response} || $self->{closed} });
    return $self->{open} ? 1 : 0;
}

sub opened   { $_[0]{open} ? 1 : 0 }
sub status   { $_[0]{open} ? $_[0]{open}{status} : $_[0]{response} ? $_[0]{response}{status} : undef }
sub headers  { ($_[0]{open} || $_[0]{response} || {})->{headers} || {} }
sub header   { $_[0]->headers->{ lc $_[1] } }
sub protocol { $_[0]{open} ? $_[0]{open}{protocol} : undef }
sub local_port { $_[0]{open} ? $_[0]{open}{localPort} : undef }
sub response { $_[0]{response} }           # the HTTP answer when not upgraded
sub errors   { @{ $_[0]{errors} || [] } }
sub closed   { $_[0]{closed} }             # the close event, once there

# every event received and not yet taken (without waiting)
sub pending {
    my ($self) = @_;
    $self->{hub}->drain;
    return @{ $self->{events} };
}

# Takes the first event whose type is one of @types (any type without
# @types), waiting up to $timeout; undef when none came.
sub next_event {
    my ($self, $timeout, @types) = @_;
    my %want = map { $_ => 1 } @types;
    my $found;
    $self->{hub}->wait_until($timeout // 5, sub {
        for my $i (0 .. $#{ $self->{events} }) {
            my $e = $self->{events}[$i];
            if (!@types || $want{ $e->{event} }) {
                $found = splice(@{ $self->{events} }, $i, 1);
                return 1;
            }
        }
        return 0;
    });
    return $found;
}

# The next message frame (the decoded JSON hash; ->{_raw} the text), or
# undef when none came within $timeout or the socket closed first.
sub next_message {
    my ($self, $timeout) = @_;
    my $e = $self->_next_message_event($timeout);
    return undef unless $e;
    my $j = $e->{json};
    return { _raw => $e->{data}, _binary => $e->{binary}, _t => $e->{t} } unless ref $j eq 'HASH';
    return { %$j, _raw => $e->{data}, _t => $e->{t} };
}

sub _next_message_event {
    my ($self, $timeout) = @_;
    my $found;
    $self->{hub}->wait_until($timeout // 5, sub {
        for my $i (0 .. $#{ $self->{events} }) {
            my $e = $self->{events}[$i];
            if ($e->{event} eq 'message') {
                $found = splice(@{ $self->{events} }, $i, 1);
                return 1;
            }
            return 1 if $e->{event} eq 'close';
        }
        return 0;
    });
    return $found;
}

# Messages until one of type $type arrives: returns ($that, @before)
# ($that undef on timeout or close).
sub message_of_type {
    my ($self, $type, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    my @before;
    while (1) {
        my $left = $deadline - time;
        my $m = $self->next_message($left > 0 ? $left : 0);
        return (undef, @before) unless $m;
        return ($m, @before) if ($m->{type} // '') eq $type;
        push @before, $m;
    }
}

# sends {"type":"PING"} and reads until the PONG: returns ($pong, @before,
# with $pong->{_rtt} the seconds from the send to its arrival)
sub ping_roundtrip {
    my ($self, $timeout) = @_;
    my $t0 = time;
    $self->send_json({ type => 'PING' });
    my ($pong, @before) = $self->message_of_type('PONG', $timeout // 5);
    $pong->{_rtt} = $pong->{_t} - $t0 if $pong;
    return ($pong, @before);
}

# the frames that arrived before a PING's PONG (the socket's "nothing else
# came" check): undef if no PONG
sub frames_before_pong {
    my ($self, $timeout) = @_;
    my ($pong, @before) = $self->ping_roundtrip($timeout);
    return $pong ? \@before : undef;
}

sub send_text {
    my ($self, $text, %o) = @_;
    $self->{hub}->command(cmd => 'send', id => $self->{id}, text => $text, %o);
}

sub send_json {
    my ($self, $data) = @_;
    $self->send_text($Ahava::Test::WS::JSON_TEXT->encode($data));
}

sub send_binary {
    my ($self, $bytes) = @_;
    $self->{hub}->command(cmd => 'send', id => $self->{id}, base64 => encode_base64($bytes, ''));
}

sub ping {
    my ($self, $data) = @_;
    $self->{hub}->command(cmd => 'ping', id => $self->{id}, data => $data // '');
}

sub close {
    my ($self, $code, $reason) = @_;
    return if $self->{closed};
    $self->{hub}->command(cmd => 'close', id => $self->{id}, code => $code // 1000,
                          (defined $reason ? (reason => $reason) : ()));
}

sub terminate {
    my ($self) = @_;
    return if $self->{closed};
    $self->{hub}->command(cmd => 'terminate', id => $self->{id});
}

sub pause  { $_[0]{hub}->command(cmd => 'pause',  id => $_[0]{id}) }
sub resume { $_[0]{hub}->command(cmd => 'resume', id => $_[0]{id}) }

# waits for the close event (leaves the other events); the event or undef
sub wait_close {
    my ($self, $timeout) = @_;
    $self->{hub}->wait_until($timeout // 5, sub { $self->{closed} });
    return $self->{closed};
}


package Ahava::Test::WS::Raw;

# The raw client: the handshake and every frame by hand.

use strict;
use warnings;

use Carp qw(croak);
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use IO::Socket::INET;
use MIME::Base64 qw(encode_base64);
use Socket qw(SOL_SOCKET SO_RCVBUF);
use Time::HiRes qw(time);

$SIG{PIPE} = 'IGNORE';

# connect(as => | token =>, via => 'header'|'query'|'protocol',
#         path => '/ws', query => [k => v] | 'raw', method => 'GET',
#         key => (default: a random valid one), version => 13,
#         headers => { Name => value | undef (omit a default) } or
#                    [[name, value], ...] (added after the defaults),
#         rcvbuf => bytes (SO_RCVBUF before connecting), port/nginx,
#         timeout => 5)
# Returns the object with the HTTP answer read; ->upgraded when 101.
sub connect {
    my ($class, %o) = @_;
    my $port = Ahava::Test::WS::_port_of(%o);
    my ($h, $protocols, $query) = Ahava::Test::WS::ws_token_args(%o);
    my $key = exists $o{key} ? $o{key} : encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
    my @q = (@$query, ref $o{query} eq 'ARRAY' ? @{ $o{query} } : ());
    my $qs = join '&', grep { length } Ahava::Test::WS::_query(query => \@q),
                                       (ref $o{query} ? () : ($o{query} // ()));
    my $path = ($o{path} // '/ws') . (length $qs ? "?$qs" : '');

    my @h = (['Host', "127.0.0.1:$port"], ['Upgrade', 'websocket'],
             ['Connection', 'Upgrade'], ['Sec-WebSocket-Key', $key],
             ['Sec-WebSocket-Version', $o{version} // 13]);
    push @h, ['Authorization', $h->{Authorization}] if $h->{Authorization};
    push @h, ['Sec-WebSocket-Protocol', join(', ', @$protocols)] if @$protocols;
    if (ref $o{headers} eq 'HASH') {
        for my $name (sort keys %{ $o{headers} }) {
            @h = grep { lc $_->[0] ne lc $name } @h;
            push @h, [$name, $o{headers}{$name}] if defined $o{headers}{$name};
        }
    } elsif (ref $o{headers} eq 'ARRAY') {
        push @h, @{ $o{headers} };
    }
    @h = grep { defined $_->[1] } @h;
    my $req = ($o{method} // 'GET') . " $path HTTP/1.1\r\n"
            . join('', map { "$_->[0]: $_->[1]\r\n" } @h) . "\r\n"
            . ($o{body} // '');

    my $s = IO::Socket::INET->new(Proto => 'tcp') or croak "socket: $!";
    if ($o{rcvbuf}) {
        setsockopt($s, SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) or croak "SO_RCVBUF: $!";
    }
    $s->connect(Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1')))
        or croak "connect to 127.0.0.1:$port: $!";
    $s->autoflush(1);
    my $self = bless { sock => $s, in => '', key => $key, request => $req,
                       port => $port }, $class;
    $self->send_bytes($req);
    $self->_read_answer($o{timeout} // 5);
    return $self;
}

sub sock      { $_[0]{sock} }
sub key       { $_[0]{key} }
sub status    { $_[0]{status} }
sub headers   { $_[0]{headers} || {} }
sub header    { $_[0]{headers}{ lc $_[1] } }
sub body      { $_[0]{body} }
sub upgraded  { ($_[0]{status} // 0) == 101 }
sub eof       { $_[0]{eof} }
sub local_port { $_[0]{sock}->sockport }

# the HTTP answer as an Ahava::Test::Response (for api_error_is)
sub response {
    my ($self) = @_;
    return Ahava::Test::Response->new(status => $self->{status} // 0,
        reason => $self->{reason}, headers => $self->headers,
        raw => $self->{body} // '', error => $self->{answer_error});
}

sub json {
    my ($self) = @_;
    return eval { $Ahava::Test::WS::JSON_BYTES->decode($self->{body} // '') };
}

# reads until $cond is true, EOF or $timeout; true if $cond
sub _fill {
    my ($self, $timeout, $cond) = @_;
    my $deadline = time + $timeout;
    my $sel = IO::Select->new($self->{sock});
    while (1) {
        return 1 if $cond->();
        return 0 if $self->{eof};
        my $left = $deadline - time;
        return 0 if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($self->{sock}, my $buf, 1 << 16);
        if (defined $n && $n > 0) {
            $self->{in} .= $buf;
            $self->{bytes_read} += $n;
        } elsif (defined $n || ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR)) {
            $self->{read_error} = "$!" unless defined $n;
            $self->{eof} = time;
        }
    }
}

sub _read_answer {
    my ($self, $timeout) = @_;
    my $end;
    $self->_fill($timeout, sub { ($end = index($self->{in}, "\r\n\r\n")) >= 0 })
        or do { $self->{answer_error} = $self->{eof} ? 'closed before an answer' : 'no answer';
                return };
    my $head = substr($self->{in}, 0, $end + 4, '');
    my ($line, @lines) = split /\r\n/, $head;
    ($self->{status}, $self->{reason}) = $line =~ m{^HTTP/1\.[01] (\d{3}) ?(.*)$};
    my %h;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
        $h{lc $k} = exists $h{lc $k} ? "$h{lc $k}, $v" : $v;
        push @{ $self->{header_pairs} }, [$k, $v];
    }
    $self->{headers} = \%h;
    return if ($self->{status} // 0) == 101;
    # not upgraded: the body
    if (defined $h{'content-length'}) {
        my $n = $h{'content-length'};
        $self->_fill($timeout, sub { length $self->{in} >= $n });
        $self->{body} = substr($self->{in}, 0, $n, '');
    } elsif (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        $self->_fill($timeout, sub { $self->{in} =~ /(?:^|\r\n)0\r\n\r\n/ });
        my ($body, $buf) = ('', $self->{in});
        while ($buf =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $body .= substr($buf, 0, $n);
            substr($buf, 0, $n + 2) = '';
        }
        $self->{body} = $body;
        $self->{in} = '';
    } else {
        $self->_fill($timeout, sub { 0 });
        $self->{body} = $self->{in};
        $self->{in} = '';
    }
}

# the bytes that came after the HTTP answer and were not parsed yet
sub buffered { $_[0]{in} }

sub send_bytes {
    my ($self, $bytes) = @_;
    my $s = $self->{sock};
    my $sel = IO::Select->new($s);
    while (length $bytes) {
        my $n = syswrite($s, $bytes);
        if (defined $n) {
            substr($bytes, 0, $n) = '';
        } elsif ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR) {
            $sel->can_write(5) or return 0;
        } else {
            $self->{write_error} = "$!";
            return 0;
        }
    }
    return 1;
}

# send_frame(same options as Ahava::Test::WS::ws_frame)
sub send_frame {
    my ($self, %o) = @_;
    return $self->send_bytes(Ahava::Test::WS::ws_frame(%o));
}

sub send_text {
    my ($self, $text, %o) = @_;
    utf8::encode($text) if utf8::is_utf8($text);
    return $self->send_frame(opcode => 1, payload => $text, %o);
}

sub send_json {
    my ($self, $data) = @_;
    return $self->send_text($Ahava::Test::WS::JSON_BYTES->encode($data));
}

# a close frame: send_close(1000, 'bye'), send_close(undef) (no payload),
# send_close(raw => $payload)
sub send_close {
    my ($self, $code, $reason, %o) = @_;
    my $p = exists $o{raw} ? $o{raw}
          : defined $code ? pack('n', $code) . ($reason // '') : '';
    return $self->send_frame(opcode => 8, payload => $p);
}

# One server frame: { opcode, fin, rsv, masked, payload, code, reason
# (close frames), text (decoded JSON for text frames: json) }, or
# { eof => 1 } when the server closed, or undef on timeout.
sub read_frame {
    my ($self, $timeout) = @_;
    my $f;
    $self->_fill($timeout // 5, sub { $f = $self->_parse_frame; $f });
    return $f if $f;
    return { eof => 1, buffered => length $self->{in} } if $self->{eof};
    return undef;
}

sub _parse_frame {
    my ($self) = @_;
    my $b = \$self->{in};
    return undef if length $$b < 2;
    my ($b0, $b1) = unpack('CC', $$b);
    my $len = $b1 & 0x7f;
    my $masked = $b1 & 0x80 ? 1 : 0;
    my $off = 2;
    if ($len == 126) {
        return undef if length $$b < 4;
        $len = unpack('n', substr($$b, 2, 2));
        $off = 4;
    } elsif ($len == 127) {
        return undef if length $$b < 10;
        $len = unpack('Q>', substr($$b, 2, 8));
        $off = 10;
    }
    my $key = '';
    if ($masked) {
        return undef if length $$b < $off + 4;
        $key = substr($$b, $off, 4);
        $off += 4;
    }
    return undef if length $$b < $off + $len;
    my $payload = substr($$b, $off, $len);
    substr($$b, 0, $off + $len) = '';
    if ($masked) {
        $payload ^= substr($key x (int($len / 4) + 1), 0, $len);
    }
    my $f = { fin => $b0 >> 7, rsv => ($b0 >> 4) & 7, opcode => $b0 & 0x0f,
              masked => $masked, payload => $payload, len => $len };
    if ($f->{opcode} == 8) {
        if ($len >= 2) {
            $f->{code} = unpack('n', $payload);
            $f->{reason} = substr($payload, 2);
        } else {
            $f->{code} = undef;
        }
    } elsif ($f->{opcode} == 1) {
        $f->{json} = eval { $Ahava::Test::WS::JSON_BYTES->decode($payload) };
    }
    return $f;
}

# The next text frame's JSON (skipping nothing: another frame first →
# returned as is); undef on timeout
sub next_json {
    my ($self, $timeout) = @_;
    my $f = $self->read_frame($timeout) or return undef;
    return $f->{json} if $f->{opcode} && $f->{opcode} == 1 && ref $f->{json} eq 'HASH';
    return $f;
}

# Reads until a close frame or EOF: returns ($close_frame_or_eof, @frames
# before it).  The close frame is answered with a close (as a client must)
# unless no_reply => 1.
sub expect_close {
    my ($self, $timeout, %o) = @_;
    my $deadline = time + ($timeout // 5);
    my @before;
    while (1) {
        my $left = $deadline - time;
        my $f = $self->read_frame($left > 0 ? $left : 0);
        return (undef, @before) unless $f;
        if ($f->{eof} || $f->{opcode} == 8) {
            if (!$f->{eof} && !$o{no_reply}) {
                $self->send_close($f->{code});
            }
            return ($f, @before);
        }
        push @before, $f;
    }
}

# After a close: waits until the server closes TCP; true when it did
sub wait_eof {
    my ($self, $timeout) = @_;
    $self->_fill($timeout // 5, sub { 0 });
    return $self->{eof} ? 1 : 0;
}

# {"type":"PING"} and the frames up to its PONG: ($pong_json, @before)
sub ping_roundtrip {
    my ($self, $timeout) = @_;
    my $t0 = time;
    $self->send_json({ type => 'PING' });
    my $deadline = $t0 + ($timeout // 5);
    my @before;
    while (1) {
        my $left = $deadline - time;
        my $f = $self->read_frame($left > 0 ? $left : 0) or return (undef, @before);
        return (undef, @before, $f) if $f->{eof};
        if ($f->{opcode} == 1 && ref $f->{json} eq 'HASH' && ($f->{json}{type} // '') eq 'PONG') {
            return ({ %{ $f->{json} }, _rtt => time - $t0 }, @before);
        }
        push @before, $f;
        return (undef, @before) if $f->{opcode} == 8;
    }
}

sub close_socket {
    my ($self) = @_;
    CORE::close($self->{sock}) if $self->{sock};
    $self->{eof} //= time;
}

1;
