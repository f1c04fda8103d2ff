package Ahava::Messages;

# Helpers shared by the /api/messages tests (t/2*-messages-*.t), on top of
# Ahava::Test: the nginx config, JSON requests, messages written straight
# into PostgreSQL (encrypted by Node's crypto, as the Node app would),
# Node-side decryption, and a raw RESP subscriber for the events.
#
#   use Ahava::Test;
#   use Ahava::Messages;
#   setup();
#   start_messages_nginx();
#   my $r = send_message('nurse1', $ID{visit1}, $ID{patient1}, 'hello');
#   my @ids = insert_messages({ visit => $ID{visit1}, from => 'nurse1',
#                               to => 'patient1', content => 'hi', read => 0 });
#   my $sub = Ahava::Messages::Subscriber->new(redis_port());

use strict;
use warnings;

use Carp qw(croak);
use Exporter 'import';
use JSON::PP ();
use Ahava::Test;

our @EXPORT = qw(
    messages_config start_messages_nginx json_request send_message
    data_of details_of insert_messages new_id node_decrypt message_row
    sql_quote redis_port uid $JSONC
);

our $JSONC = JSON::PP->new->utf8->canonical;

# The http{}-level config: the API server of conf.d/ahava.conf.
# keys => 'env:NEW_KEY env:ENCRYPTION_KEY' replaces the encryption key(s).
sub messages_config {
    my (%o) = @_;
    my $keys = $o{keys} // 'env:ENCRYPTION_KEY';
    return <<"_EOC_";
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    $keys;
ahava_user_cache_ttl    0;

server {
    listen       127.0.0.1:\$TEST_NGINX_SERVER_PORT;
    server_name  _;
    client_max_body_size  64k;
    error_page 400 401 403 404 405 413 414 429 500 502 503 504 \@ahava_error;

    location = /health { ahava_health; }
    location /api/visits { ahava_visits; }
    location /api/exports/ { ahava_visits; }
    location /api/messages { ahava_messages; }
    location / { return 404; }
    location \@ahava_error { ahava_error_page; }
}
_EOC_
}

# start_messages_nginx(keys => ..., name => ..., env => {...}, workers => 1)
sub start_messages_nginx {
    my (%o) = @_;
    my $keys = delete $o{keys};
    return start_nginx(messages_config(keys => $keys), workers => 1, %o);
}

# the user id of a %ID name ('nurse1'), or the id itself
sub uid { exists $ID{ $_[0] } ? $ID{ $_[0] } : $_[0] }

# json_request($method, $path, $as, $data, %o): $data (a reference) is sent
# as UTF-8 JSON with Content-Type application/json; a plain scalar is sent
# as those bytes.  Returns the Ahava::Test::Response.
sub json_request {
    my ($method, $path, $as, $data, %o) = @_;
    my %h = (%{ $o{headers} || {} });
    my $body;
    if (defined $data) {
        $body = ref $data ? $JSONC->encode($data) : $data;
        $h{'Content-Type'} //= 'application/json';
    }
    return response($method, $path, (defined $as ? (as => $as) : ()),
                    headers => \%h, (defined $body ? (body => $body) : ()),
                    %o);
}

# send_message($as, $visitId, $recipientId, $content, extra => fields)
sub send_message {
    my ($as, $visit, $to, $content, %extra) = @_;
    return json_request(POST => '/api/messages', $as,
        { visitId => $visit, recipientId => uid($to), content => $content,
          %extra });
}

sub data_of {
    my $j = $_[0]->json;
    return ref $j eq 'HASH' ? $j->{data} : undef;
}

# the "field" names of a 400's details
sub details_of {
    my $j = $_[0]->json;
    return () unless ref $j eq 'HASH' && ref $j->{details} eq 'ARRAY';
    return map { ref $_ eq 'HASH' ? ($_->{field} // '') : '' } @{ $j->{details} };
}

my $seq = 0;

# A fresh 25-character id: c + 4-letter tag + pid + a counter
sub new_id {
    my ($tag) = @_;
    $tag = substr(($tag // 'tst') . 'xxxx', 0, 4);
    return sprintf('c%s%05d%015d', $tag, $$ % 100000, ++$seq);
}

sub sql_quote {
    my ($s) = @_;
    return 'NULL' unless defined $s;
    $s =~ s/'/''/g;
    return "'$s'";
}

# insert_messages({ id =>, visit =>, from =>, to =>, content => (plaintext,
#   encrypted with Node's crypto) | ciphertext => (stored as is),
#   format => 'v2'|'hex', read => 0|1, type => 'TEXT',
#   at => SQL timestamp expression (default now + a counter in ms) }, ...)
# One node run, one psql run.  Returns the ids.
my $at_seq = 0;
sub insert_messages {
    my (@specs) = @_;
    my @plain = grep { !exists $_->{ciphertext} } @specs;
    my %by_format;
    push @{ $by_format{ $_->{format} // 'v2' } }, $_ for @plain;
    for my $fmt (keys %by_format) {
        my @s = @{ $by_format{$fmt} };
        my @ct = node_encrypt([map { $_->{content} } @s], format => $fmt);
        $s[$_]{ciphertext} = $ct[$_] for 0 .. $#s;
    }
    my @rows;
    for my $s (@specs) {
        $s->{id} //= new_id('msg');
        my $at = $s->{at} // sprintf(
            q{LOCALTIMESTAMP(3) - interval '1 day' + interval '%d milliseconds'},
            ++$at_seq);
        push @rows, sprintf('(%s, %s, %s, %s, %s::"MessageType", %s, %s, %s, %s)',
            sql_quote($s->{id}), sql_quote(uid($s->{visit})),
            sql_quote(uid($s->{from})), sql_quote(uid($s->{to})),
            sql_quote($s->{type} // 'TEXT'), sql_quote($s->{ciphertext}),
            $s->{read} ? 'true' : 'false', $at, $at);
    }
    my $sql = 'INSERT INTO messages (id, "visitId", "senderId", "recipientId", type,'
            . ' content, "isRead", "createdAt", "updatedAt") VALUES '
            . join(",\n", @rows);
    require Encode;
    psql(Encode::encode('UTF-8', $sql));
    return map { $_->{id} } @specs;
}

# The messages row as a hash (NULL → undef), or undef when it is gone
sub message_row {
    my ($id) = @_;
    my @cols = ('id', 'visitId', 'senderId', 'recipientId', 'type', 'content',
                'isRead', 'attachmentUrl', 'attachmentType', 'createdAt',
                'updatedAt');
    my $rows = psql('SELECT ' . join(', ', map { qq{"$_"::text} } @cols)
                    . ' FROM messages WHERE id = ' . sql_quote($id));
    return undef unless @$rows;
    my %h;
    @h{@cols} = @{ $rows->[0] };
    return \%h;
}

# Decrypts with Node's crypto (the Node app's side of SPEC §10): v2 or the
# legacy hex form.  Returns the plaintexts (undef where authentication fails).
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
            let parts = ct.split(':'), enc;
            if (parts[0] === 'v2') { parts = parts.slice(1); enc = 'base64'; }
            else { enc = 'hex'; }
            if (parts.length !== 3) return null;
            const [iv, tag, data] = parts.map((p) => Buffer.from(p, enc));
            const d = crypto.createDecipheriv('aes-256-gcm', k, iv);
            d.setAuthTag(tag);
            return Buffer.concat([d.update(data), d.final()]).toString('utf8');
        } catch (e) {
            return null;
        }
    });
    process.stdout.write(JSON.stringify(out));
});
_JS_
    my $in = $JSONC->encode({ key => $o{key} // env_value('ENCRYPTION_KEY'),
                              cts => $cts });
    my ($rc, $out) = run_capture(['node', '-e', $script], stdin => $in);
    croak "node failed ($rc): $out" if $rc;
    return @{ $JSONC->decode($out) };
}

sub redis_port {
    my ($port) = (env_value('REDIS_URL') // '') =~ m{//(?:[^@/]*@)?[^:/]+:(\d+)}
        or croak "no Redis port in REDIS_URL";
    return $port;
}


package Ahava::Messages::Subscriber;

# A raw RESP client: PSUBSCRIBE to a pattern (default ahava:user:*) and
# collect every pmessage as { channel, user, payload (decoded JSON or raw),
# raw }.  Waits are bounded polls on the socket, never sleeps.
#
#   my $s = Ahava::Messages::Subscriber->new($port);   # (auth => $password)
#   my @ev = $s->wait_for(5, sub { grep {...} @_ });  # all events so far
#   $s->take;                                         # and forget them

use strict;
use warnings;

use Carp qw(croak);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use Time::HiRes qw(time);

my $JSON = JSON::PP->new->utf8;

sub new {
    my ($class, $port, %o) = @_;
    my $pattern = $o{pattern} // 'ahava:user:*';
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                     Proto => 'tcp', Timeout => 5)
        or croak "connect to Redis on $port: $!";
    $sock->autoflush(1);
    my $self = bless { sock => $sock, buf => '', events => [], port => $port,
                       pattern => $pattern }, $class;
    $self->_send('AUTH', $o{auth}) if defined $o{auth};
    $self->_send('PSUBSCRIBE', $pattern);
    my $ok = $self->_poll(5, sub { $self->{subscribed} });
    croak "PSUBSCRIBE $pattern was not confirmed" unless $ok;
    return $self;
}

sub _send {
    my ($self, @args) = @_;
    my $cmd = '*' . @args . "\r\n";
    $cmd .= '$' . length($_) . "\r\n$_\r\n" for @args;
    print { $self->{sock} } $cmd;
}

# one RESP value from the front of $$buf, or () when incomplete
sub _parse {
    my ($buf, $pos) = @_;
    my $nl = index($$buf, "\r\n", $pos);
    return () if $nl < 0;
    my $type = substr($$buf, $pos, 1);
    my $line = substr($$buf, $pos + 1, $nl - $pos - 1);
    my $next = $nl + 2;
    if ($type eq '+' || $type eq '-' || $type eq ':') {
        return ($line, $next);
    }
    if ($type eq '$') {
        return (undef, $next) if $line < 0;
        return () if length($$buf) < $next + $line + 2;
        return (substr($$buf, $next, $line), $next + $line + 2);
    }
    if ($type eq '*') {
        return (undef, $next) if $line < 0;
        my @items;
        for (1 .. $line) {
            my ($v, $p) = _parse($buf, $next);
            return () unless defined $p;
            push @items, $v;
            $next = $p;
        }
        return (\@items, $next);
    }
    croak "unexpected RESP type '$type'";
}

sub _read {
    my ($self, $timeout) = @_;
    my $sel = IO::Select->new($self->{sock});
    return 0 unless $sel->can_read($timeout);
    my $n = sysread($self->{sock}, my $chunk, 65536);
    if (!$n) {
        $self->{closed} = 1;
        return 0;
    }
    $self->{buf} .= $chunk;
    while (1) {
        my ($v, $p) = _parse(\$self->{buf}, 0);
        last unless defined $p;
        substr($self->{buf}, 0, $p) = '';
        next unless ref $v eq 'ARRAY';
        if ($v->[0] eq 'psubscribe') {
            $self->{subscribed} = 1;
        } elsif ($v->[0] eq 'pmessage') {
            my ($channel, $raw) = @$v[2, 3];
            my ($user) = $channel =~ /^ahava:user:(.*)$/;
            my $payload = eval { $JSON->decode($raw) };
            push @{ $self->{events} }, { channel => $channel, user => $user,
                                         payload => $payload // $raw,
                                         raw => $raw, time => time };
        }
    }
    return 1;
}

# reads until $cb returns true or $timeout seconds have passed
sub _poll {
    my ($self, $timeout, $cb) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $v = $cb->();
        return $v if $v;
        my $left = $deadline - time;
        return $v if $left <= 0 || $self->{closed};
        $self->_read($left);
    }
}

# events collected so far (without reading)
sub events { @{ $_[0]{events} } }

# reads what is there now, returns every event so far
sub drain {
    my ($self) = @_;
    1 while $self->_read(0);
    return $self->events;
}

# Reads until $cb->(@events) is true (or $timeout); returns all events.
sub wait_for {
    my ($self, $timeout, $cb) = @_;
    $self->_poll($timeout, sub { $cb->(@{ $self->{events} }) });
    return $self->events;
}

# Returns the collected events and forgets them.
sub take {
    my ($self) = @_;
    my @e = @{ $self->{events} };
    $self->{events} = [];
    return @e;
}

sub closed { $_[0]{closed} }

sub disconnect {
    my ($self) = @_;
    CORE::close($self->{sock}) if $self->{sock};
    $self->{sock} = undef;
    $self->{closed} = 1;
}

1;
