package Ahava::Test::HTTP;

# A small raw HTTP/1.1 client over IO::Socket::INET: exact control of what
# is sent (odd headers, pipelining, aborts) and a non-blocking mode for the
# concurrency tests.
#
#   my $res = Ahava::Test::HTTP::request($port, 'GET', '/health',
#                 headers => { Authorization => "Bearer $t" }, body => '...');
#   my @c = map { Ahava::Test::HTTP::Conn->open($port, 'GET', '/x') } 1..6;
#   Ahava::Test::HTTP::wait_all(\@c, 5);   # $c->response, $c->elapsed

use strict;
use warnings;

use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);

$SIG{PIPE} = 'IGNORE';

# headers: a hash ref or an array ref of [name, value] pairs (kept in order,
# duplicates allowed).  A Host and "Connection: close" are added unless given.
sub build_request {
    my ($method, $path, %o) = @_;
    my @h;
    if (ref $o{headers} eq 'HASH') {
        @h = map { [$_, $o{headers}{$_}] } sort keys %{ $o{headers} };
    } elsif (ref $o{headers} eq 'ARRAY') {
        @h = @{ $o{headers} };
    }
    my %have = map { lc($_->[0]) => 1 } @h;
    unshift @h, ['Host', 'localhost'] unless $have{host} || $o{no_host};
    push @h, ['Connection', 'close'] unless $have{connection};
    my $body = $o{body};
    if (defined $body && !$have{'content-length'}
        && !$have{'transfer-encoding'})
    {
        push @h, ['Content-Length', length $body];
    }
    my $req = "$method $path HTTP/1.1\r\n";
    $req .= "$_->[0]: $_->[1]\r\n" for @h;
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $req;
}

# One request on a fresh connection; reads until the server closes.
sub request {
    my ($port, $method, $path, %o) = @_;
    my $raw = defined $o{raw} ? $o{raw} : build_request($method, $path, %o);
    my $c = Ahava::Test::HTTP::Conn->open_raw($port, $raw);
    wait_all([$c], $o{timeout} || 10);
    return $c->response;
}

# Parses every response in $buf (pipelining); returns Response objects.
sub parse_responses {
    my ($buf, %o) = @_;
    my @res;
    while (length $buf) {
        my $end = index($buf, "\r\n\r\n");
        if ($end < 0) {
            push @res, Ahava::Test::Response->new(error => 'incomplete header',
                                                  raw_response => $buf);
            last;
        }
        my $head = substr($buf, 0, $end);
        $buf = substr($buf, $end + 4);
        my ($status_line, @lines) = split /\r\n/, $head;
        my ($status, $reason) = $status_line =~ m{^HTTP/1\.[01] (\d{3}) ?(.*)$};
        my (%h, @pairs);
        for (@lines) {
            my ($k, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
            push @pairs, [$k, $v];
            $h{lc $k} = exists $h{lc $k} ? "$h{lc $k}, $v" : $v;
        }
        my $body = '';
        my $incomplete;
        if ($o{head} || (defined $status && ($status == 204 || $status == 304))) {
            # no body
        } elsif (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            while (1) {
                unless ($buf =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) { $incomplete = 1; last }
                my $n = hex $1;
                if ($n == 0) { $buf =~ s/^(?:[^\r\n]+\r\n)*\r\n//; last }
                if (length $buf < $n + 2) { $incomplete = 1; $body .= $buf; $buf = ''; last }
                $body .= substr($buf, 0, $n);
                $buf = substr($buf, $n + 2);
            }
        } elsif (defined $h{'content-length'}) {
            my $n = $h{'content-length'};
            $incomplete = 1 if length $buf < $n;
            $body = substr($buf, 0, $n);
            $buf = length $buf > $n ? substr($buf, $n) : '';
        } else {
            $body = $buf;
            $buf = '';
        }
        push @res, Ahava::Test::Response->new(
            status => $status, reason => $reason, headers => \%h,
            header_pairs => \@pairs, raw => $body,
            error => $incomplete ? 'incomplete body' : undef);
    }
    return @res;
}

# Drives the connections until each has been closed by the server (or by
# its own abort) or $timeout seconds have passed.
sub wait_all {
    my ($conns, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my @open = grep { !$_->{done} } @$conns;
        last unless @open;
        my $left = $deadline - time;
        last if $left <= 0;
        my $rsel = IO::Select->new(map { $_->{sock} } grep { !$_->{closed} } @open);
        my $wsel = IO::Select->new(map { $_->{sock} }
                                   grep { !$_->{closed} && length $_->{out} } @open);
        my ($r, $w) = IO::Select->select($rsel, $wsel, undef, $left);
        my %by = map { fileno($_->{sock}) => $_ } grep { !$_->{closed} } @open;
        $by{fileno $_}->_write for @{ $w || [] };
        $by{fileno $_}->_read  for @{ $r || [] };
    }
    $_->{timed_out} = !$_->{done} for @$conns;
    return $conns;
}

package Ahava::Test::HTTP::Conn;

use strict;
use warnings;
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use IO::Socket::INET;
use Time::HiRes qw(time);

sub open {
    my ($class, $port, $method, $path, %o) = @_;
    return $class->open_raw($port,
        Ahava::Test::HTTP::build_request($method, $path, %o), %o);
}

sub open_raw {
    my ($class, $port, $raw, %o) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                     Proto => 'tcp', Timeout => 5)
        or die "connect to 127.0.0.1:$port: $!";
    $sock->blocking(0);
    my $self = bless { sock => $sock, out => $raw, in => '', start => time,
                       head => $o{head} }, $class;
    $self->_write;
    return $self;
}

sub _write {
    my ($self) = @_;
    return unless length $self->{out};
    my $n = syswrite($self->{sock}, $self->{out});
    if (defined $n) {
        substr($self->{out}, 0, $n) = '';
    } elsif ($! != EAGAIN && $! != EWOULDBLOCK && $! != EINTR) {
        $self->{write_error} = "$!";
        $self->{out} = '';              # the server closed: read its answer
    }
}

sub _read {
    my ($self) = @_;
    my $n = sysread($self->{sock}, my $buf, 65536);
    if (defined $n && $n > 0) {
        $self->{in} .= $buf;
        $self->{first_byte} //= time;
        return;
    }
    return if !defined $n && ($! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR);
    $self->{read_error} = "$!" unless defined $n;
    $self->{end} = time;
    $self->{done} = 1;
    close $self->{sock};
    $self->{closed} = 1;
}

# Close from the client side (an aborting client).
sub abort {
    my ($self) = @_;
    return if $self->{closed};
    close $self->{sock};
    $self->{closed} = $self->{done} = $self->{aborted} = 1;
    $self->{end} = time;
}

sub done      { $_[0]{done} }
sub timed_out { $_[0]{timed_out} }
sub raw       { $_[0]{in} }
# seconds from open to the server's close (or to now)
sub elapsed   { ($_[0]{end} // time) - $_[0]{start} }

sub responses {
    my ($self) = @_;
    my @r = Ahava::Test::HTTP::parse_responses($self->{in}, head => $self->{head});
    $_->{elapsed} = $self->elapsed for @r;
    return @r;
}

sub response {
    my ($self) = @_;
    my ($r) = $self->responses;
    $r ||= Ahava::Test::Response->new(error => $self->{timed_out}
        ? 'timed out, no response' : 'connection closed without a response'
          . ($self->{read_error} ? " ($self->{read_error})" : ''));
    $r->{error} //= 'timed out' if $self->{timed_out};
    $r->{elapsed} = $self->elapsed;
    return $r;
}

package Ahava::Test::Response;

use strict;
use warnings;
use JSON::PP ();

my $JSON = JSON::PP->new->utf8->allow_nonref;

sub new {
    my ($class, %a) = @_;
    $a{status} //= 0;
    $a{headers} ||= {};
    $a{raw} //= '';
    return bless \%a, $class;
}

sub status  { $_[0]{status} }
sub headers { $_[0]{headers} }
sub header  { $_[0]{headers}{ lc $_[1] } }
sub raw     { $_[0]{raw} }
sub elapsed { $_[0]{elapsed} }
sub error   { $_[0]{error} }
sub content_type { $_[0]{headers}{'content-type'} // '' }
sub is_json { $_[0]->content_type =~ m{^application/json\b}i }

# The decoded JSON body (undef when it is not JSON)
sub json {
    my ($self) = @_;
    return $self->{json} if exists $self->{json};
    $self->{json} = eval { $JSON->decode($self->{raw}) };
    return $self->{json};
}

# JSON when it parses, the raw text otherwise
sub body {
    my ($self) = @_;
    my $j = $self->json;
    return defined $j ? $j : $self->{raw};
}

# For diagnostics: status line, content type and (the start of) the body
sub dump {
    my ($self) = @_;
    my $b = $self->{raw};
    $b = substr($b, 0, 3000) . '...' if length $b > 3000;
    return sprintf("HTTP %s %s%s [%s] %.3fs\n%s", $self->{status},
                   $self->{reason} // '',
                   $self->{error} ? " ($self->{error})" : '',
                   $self->content_type, $self->{elapsed} // 0, $b);
}

1;
