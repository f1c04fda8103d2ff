# Uploads and downloads (SPEC §7, issue 9): every accepted type made by a
# real tool, the exact limits, type by content (a JPEG named .png, HTML
# named .jpg, SVG, a polyglot, an empty part), two files, bodies split at
# any byte and chunked, an abort halfway leaving nothing; downloads by
# role, Range, 304, traversal; attachments of messages.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::Util qw(slurp spew);
use Digest::SHA qw(sha256_hex);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use Time::HiRes qw(time sleep);

setup();

my $DATA = tempdir('ahava-uploads-XXXXXX', TMPDIR => 1, CLEANUP => 1);
mkdir "$DATA/uploads";
mkdir "$DATA/uploads/$_" for qw(images documents exports);
chmod 0777, $DATA, map { "$DATA/uploads/$_" } '', qw(images documents exports);

my $CONF = <<'_EOC_';
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_upload_root       $TEST_NGINX_DATA/uploads;
ahava_download_cache_ttl 1s;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    client_body_timeout  5s;
    error_page 400 401 403 404 405 413 414 416 429 494 500 501 502 503 504
               505 /_ahava_error;

    location /api/messages/upload/ { ahava_upload; }
    location /api/messages { ahava_messages; }
    location /uploads/ {
        ahava_download;
        root              $TEST_NGINX_DATA;
        disable_symlinks  on;
    }
    location = /_ahava_error { internal; ahava_error_page; }
}
_EOC_

my $n = start_nginx($CONF, workers => 1, vars => { DATA => $DATA });
my $JSON = JSON::PP->new->utf8->canonical;
my $WORK = tempdir('ahava-files-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# --- files made by real tools ----------------------------------------------
my $IM = -x '/usr/bin/convert-im6.q16' ? '/usr/bin/convert-im6.q16' : '/usr/bin/convert';
sub tool {
    my ($rc, $out) = run_capture([@_]);
    die "@_ failed ($rc): $out" if $rc;
}
tool($IM, '-size', '64x48', 'gradient:blue-red', "$WORK/$_") for qw(a.jpg a.png a.gif a.webp);
spew("$WORK/a.ps", "%!PS\n/Helvetica findfont 12 scalefont setfont 72 720 moveto (Visit report) show showpage\n");
tool('gs', '-q', '-dBATCH', '-dNOPAUSE', '-sDEVICE=pdfwrite', "-sOutputFile=$WORK/a.pdf", "$WORK/a.ps");
spew("$WORK/a.txt", "Dressing changed.\nNext visit in 3 days — ngiyabonga.\n");
spew("$WORK/a.csv", "time,bp\n10:00,128/82\n");
spew("$WORK/doc.html", "<html><body><p>Visit report</p></body></html>\n");
my $OFFICE = (grep { -x } '/usr/bin/soffice', '/usr/bin/libreoffice')[0];
$ENV{HOME} //= $WORK;
tool($OFFICE, '--headless', '--convert-to', $_, '--outdir', $WORK, "$WORK/doc.html")
    for 'docx:MS Word 2007 XML', 'doc:MS Word 97';
rename "$WORK/doc.docx", "$WORK/a.docx";
rename "$WORK/doc.doc", "$WORK/a.doc";
my %FILE = map { $_ => slurp("$WORK/a.$_") } qw(jpg png gif webp pdf txt csv docx doc);
ok(length $FILE{$_} > 10, "a real .$_ (" . length($FILE{$_}) . ' bytes)') for sort keys %FILE;

# --- multipart bodies ---------------------------------------------------------
sub multipart {
    my (@parts) = @_;            # [name, filename|undef, content, type]
    my $b = 'AhavaBoundary' . int(rand 1e9);
    my $body = '';
    for my $p (@parts) {
        my ($name, $fn, $content, $type) = @$p;
        $body .= "--$b\r\nContent-Disposition: form-data; name=\"$name\""
               . (defined $fn ? "; filename=\"$fn\"" : '') . "\r\n"
               . (defined $type ? "Content-Type: $type\r\n" : '') . "\r\n$content\r\n";
    }
    $body .= "--$b--\r\n";
    return ($body, "multipart/form-data; boundary=$b");
}

sub upload {
    my ($endpoint, $parts, %o) = @_;
    my ($body, $ct) = multipart(@$parts);
    return response(POST => "/api/messages/upload/$endpoint", as => $o{as} // 'nurse1',
                    headers => { 'Content-Type' => $o{ct} // $ct }, body => $body,
                    timeout => 30);
}

sub files_on_disk {
    my @f;
    for my $d (qw(images documents)) {
        opendir(my $dh, "$DATA/uploads/$d") or next;
        push @f, map { "$d/$_" } grep { !/^\./ } readdir $dh;
    }
    return sort @f;
}
sub rows { psql_value('SELECT count(*) FROM uploads') }

my %STORED;
for my $ext (qw(jpg png gif webp)) {
    my $r = upload('image', [['image', "photo.$ext", $FILE{$ext}, "image/$ext"]]);
    api_ok($r, "image endpoint: a real .$ext: 201", status => 201) or next;
    my $d = $r->json->{data};
    like($d->{url}, qr{^/uploads/images/\d{13}-[0-9a-f]{24}\.$ext$}, "... url $d->{url}");
    is($d->{sha256}, sha256_hex($FILE{$ext}), '... the sha256 of its bytes');
    is($d->{size}, length $FILE{$ext}, '... its size');
    is($d->{type}, 'image', '... type image');
    is(slurp("$DATA$d->{url}"), $FILE{$ext}, '... the file on disk is the one sent');
    $STORED{$ext} = $d;
}
is($STORED{jpg} && $STORED{jpg}{mimetype}, 'image/jpeg', 'JPEG is image/jpeg');
is($STORED{webp} && $STORED{webp}{mimetype}, 'image/webp', 'WebP is image/webp');
for my $ext (qw(pdf doc docx txt csv)) {
    my $r = upload('file', [['file', "report.$ext", $FILE{$ext}]]);
    api_ok($r, "file endpoint: a real .$ext: 201", status => 201) or next;
    like($r->json->{data}{url}, qr{^/uploads/documents/\d{13}-[0-9a-f]{24}\.$ext$}, "... in documents/");
    $STORED{$ext} = $r->json->{data};
}
is($STORED{csv} && $STORED{csv}{mimetype}, 'text/csv', 'CSV is text/csv');
is($STORED{docx} && $STORED{docx}{mimetype},
   'application/vnd.openxmlformats-officedocument.wordprocessingml.document', 'DOCX by content');
api_ok(upload('file', [['file', 'scan.png', $FILE{png}]]), 'an image on the file endpoint: 201',
       status => 201);
is(psql_value(q{SELECT count(*) FROM uploads WHERE sha256 = } . "'" . sha256_hex($FILE{pdf}) . "'"),
   1, 'the row carries the sha256');

# --- refused: and nothing of them stays ----------------------------------------
sub refused {
    my ($name, $endpoint, $parts, $status, $code, %o) = @_;
    my @before = files_on_disk();
    my $rows = rows();
    my $r = upload($endpoint, $parts, %o);
    api_error_is($r, $status, $code, "$name: $status $code");
    is_deeply([files_on_disk()], \@before, "$name: no file left");
    is(rows(), $rows, "$name: no row");
    return $r;
}

refused('a JPEG named .png', 'image', [['image', 'x.png', $FILE{jpg}]], 415, 'UNSUPPORTED_MEDIA_TYPE');
refused('HTML named .jpg', 'image', [['image', 'x.jpg', "<html><script>alert(1)</script></html>"]],
        415, 'UNSUPPORTED_MEDIA_TYPE');
refused('SVG', 'image', [['image', 'x.svg', '<svg xmlns="http://www.w3.org/2000/svg"/>']], 415,
        'UNSUPPORTED_MEDIA_TYPE');
refused('SVG named .txt', 'file', [['file', 'x.txt', '<svg xmlns="http://www.w3.org/2000/svg"/>']],
        415, 'UNSUPPORTED_MEDIA_TYPE');
refused('a polyglot (GIF then <script>)', 'image',
        [['image', 'x.gif', $FILE{gif} . '<script>alert(1)</script>']], 415, 'UNSUPPORTED_MEDIA_TYPE');
refused('an empty part', 'image', [['image', 'x.png', '']], 415, 'UNSUPPORTED_MEDIA_TYPE');
refused('an executable', 'file', [['file', 'x.pdf', "\x7fELF\x02\x01\x01" . ("\0" x 100)]], 415,
        'UNSUPPORTED_MEDIA_TYPE');
refused('a plain zip named .docx', 'file', [['file', 'x.docx', "PK\x03\x04" . ("\0" x 26) . 'a.txt']],
        415, 'UNSUPPORTED_MEDIA_TYPE');
refused('a PDF on the image endpoint', 'image', [['image', 'x.pdf', $FILE{pdf}]], 415,
        'UNSUPPORTED_MEDIA_TYPE');
refused('two files', 'image', [['image', 'a.png', $FILE{png}], ['image', 'b.png', $FILE{png}]],
        400, 'VALIDATION_ERROR');
my $r = refused('a file in the wrong field', 'image', [['file', 'a.png', $FILE{png}]], 400,
                'VALIDATION_ERROR');
ok(ref $r->json->{details} eq 'ARRAY' && @{ $r->json->{details} }, '... with details');
refused('no file at all', 'image', [['note', undef, 'hello']], 400, 'VALIDATION_ERROR');
refused('a body that is not multipart', 'image', [['image', 'a.png', $FILE{png}]], 400,
        'VALIDATION_ERROR', ct => 'application/json');
{
    my $t = response(POST => '/api/messages/upload/image', body => 'x',
                     headers => { 'Content-Type' => 'multipart/form-data; boundary=x' });
    api_error_is($t, 401, 'TOKEN_MISSING', 'no token: 401 before any byte of the body');
}

# --- the limits -----------------------------------------------------------------
sub padded { my ($bytes, $size) = @_; return $bytes . ("\0" x ($size - length $bytes)) }
my $MiB = 1024 * 1024;
api_ok(upload('image', [['image', 'big.png', padded($FILE{png}, 5 * $MiB)]]),
       'an image of exactly 5 MiB: 201', status => 201);
refused('an image of 5 MiB + 1', 'image', [['image', 'big.png', padded($FILE{png}, 5 * $MiB + 1)]],
        413, 'PAYLOAD_TOO_LARGE');
refused('an image of 5 MiB + 1 on the file endpoint', 'file',
        [['file', 'big.png', padded($FILE{png}, 5 * $MiB + 1)]], 413, 'PAYLOAD_TOO_LARGE');
api_ok(upload('file', [['file', 'big.pdf', padded($FILE{pdf}, 10 * $MiB)]]),
       'a PDF of exactly 10 MiB: 201', status => 201);
refused('a PDF of 10 MiB + 1', 'file', [['file', 'big.pdf', padded($FILE{pdf}, 10 * $MiB + 1)]],
        413, 'PAYLOAD_TOO_LARGE');
api_ok(upload('file', [['file', 'big.txt', 'a' x (10 * $MiB)]]), 'a text of exactly 10 MiB: 201',
       status => 201);
{
    # the answer is read as soon as it is whole (the server then lingers
    # for the body the client said it would send, as it should)
    my $tok = token($ID{nurse1});
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $n->port) or die $!;
    my $t0 = time;
    print {$s} "POST /api/messages/upload/image HTTP/1.1\r\nHost: x\r\n"
             . "Authorization: Bearer $tok\r\nContent-Type: multipart/form-data; boundary=x\r\n"
             . 'Content-Length: ' . 50 * $MiB . "\r\n\r\n";
    my ($buf, $res) = ('');
    while (sysread($s, $buf, 4096, length $buf)) {
        ($res) = Ahava::Test::HTTP::parse_responses($buf);
        last if $res && !$res->{error} && !$res->{incomplete};
    }
    my $took = time - $t0;
    is($res && $res->status, 413, 'a Content-Length of 50 MiB: 413 at once');
    is($res && $res->json && $res->json->{code}, 'PAYLOAD_TOO_LARGE', '... PAYLOAD_TOO_LARGE');
    cmp_ok($took, '<', 2, '... without a byte of the body sent');
}

# --- how the body arrives -----------------------------------------------------------
{
    # a boundary split across reads: the body in 7-byte pieces
    my ($body, $ct) = multipart(['image', 'split.png', $FILE{png}]);
    my $tok = token($ID{nurse1});
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $n->port) or die $!;
    $s->autoflush(1);
    print {$s} "POST /api/messages/upload/image HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             . "Authorization: Bearer $tok\r\nContent-Type: $ct\r\n"
             . 'Content-Length: ' . length($body) . "\r\n\r\n";
    for my $piece ($body =~ /(.{1,7})/gs) { print {$s} $piece; sleep 0.0005 }
    my $resp = do { local $/; <$s> };
    my ($res) = Ahava::Test::HTTP::parse_responses($resp // '');
    is($res && $res->status, 201, 'a body sent in 7-byte pieces: 201');
    is($res && $res->json->{data}{sha256}, sha256_hex($FILE{png}), '... the file whole');

    # chunked, in chunks of 1000 bytes
    my $chunks = join '', map { sprintf("%x\r\n%s\r\n", length $_, $_) } ($body =~ /(.{1,1000})/gs);
    my $c = response(POST => '/api/messages/upload/image', as => 'nurse1',
                     headers => { 'Content-Type' => $ct, 'Transfer-Encoding' => 'chunked' },
                     body => $chunks . "0\r\n\r\n");
    api_ok($c, 'a chunked body: 201', status => 201);
    is($c->json && $c->json->{data}{sha256}, sha256_hex($FILE{png}), '... the file whole');
}
{
    # a client that goes away halfway through a 9 MiB body
    my @before = files_on_disk();
    my $rows = rows();
    my ($body, $ct) = multipart(['file', 'big.pdf', padded($FILE{pdf}, 9 * $MiB)]);
    my $tok = token($ID{nurse1});
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $n->port) or die $!;
    print {$s} "POST /api/messages/upload/file HTTP/1.1\r\nHost: x\r\n"
             . "Authorization: Bearer $tok\r\nContent-Type: $ct\r\n"
             . 'Content-Length: ' . length($body) . "\r\n\r\n" . substr($body, 0, 4 * $MiB);
    ok(poll_until(5, sub { grep { /\.part$/ } files_on_disk() }), 'halfway: the partial file exists');
    close $s;
    ok(poll_until(5, sub { !grep { /\.part$/ } files_on_disk() }), 'the client went: it is gone');
    is_deeply([files_on_disk()], \@before, '... no file left');
    is(rows(), $rows, '... no row');
}

# --- answered before the rest is read ----------------------------------------------
# the client announces 4 MiB, sends the start, and waits: the answer must
# come while most of the body is still unsent
sub early_answer {
    my ($endpoint, $field, $fn, $start, %o) = @_;
    my $b = 'EarlyBoundary';
    my $head = "--$b\r\nContent-Disposition: form-data; name=\"$field\"; filename=\"$fn\"\r\n\r\n";
    my $tok = token($ID{nurse1});
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $n->port) or die $!;
    $s->autoflush(1);
    print {$s} "POST /api/messages/upload/$endpoint HTTP/1.1\r\nHost: x\r\n"
             . "Authorization: Bearer $tok\r\nContent-Type: multipart/form-data; boundary=$b\r\n"
             . ($o{chunked} ? "Transfer-Encoding: chunked\r\n\r\n"
                            : 'Content-Length: ' . (4 * 1024 * 1024) . "\r\n\r\n");
    my $data = $head . $start;
    $data = sprintf("%x\r\n%s\r\n", length $data, $data) if $o{chunked};
    print {$s} $data;
    my $sel = IO::Select->new($s);
    my ($buf, $res) = ('');
    while ($sel->can_read(5)) {
        last unless sysread($s, $buf, 4096, length $buf);
        ($res) = Ahava::Test::HTTP::parse_responses($buf);
        last if $res && !$res->{error};
    }
    close $s;
    return $res;
}
{
    my @before = files_on_disk();
    my $rows = rows();
    my $res = early_answer('image', 'image', 'x.jpg', '<html><body>' . ('x' x 60000));
    is($res && $res->status, 415, 'HTML named .jpg: 415 with 60 KB of 4 MiB sent');
    $res = early_answer('file', 'file', 'x.pdf', "\x7fELF" . ("\0" x 60000));
    is($res && $res->status, 415, 'an executable named .pdf: 415 with 60 KB of 4 MiB sent');
    # chunked, no length known: the limit while streaming
    $res = early_answer('image', 'image', 'big.png', $FILE{png} . ("\0" x (5 * $MiB + 1)),
                        chunked => 1);
    is($res && $res->status, 413, 'a chunked image over 5 MiB: 413 while streaming');
    is($res && $res->json && $res->json->{code}, 'PAYLOAD_TOO_LARGE', '... PAYLOAD_TOO_LARGE');
    ok(poll_until(5, sub { !grep { /\.part$/ } files_on_disk() }), '... no partial file');
    is_deeply([files_on_disk()], \@before, 'none of them left a file');
    is(rows(), $rows, '... or a row');
}
{
    # a part with an empty filename is no file of ours and no field: it is
    # skipped, and still counted against the route's limit
    my @before = files_on_disk();
    my $rows = rows();
    my $res = early_answer('image', 'other', '', 'z' x (6 * $MiB), chunked => 1);
    is($res && $res->status, 413, 'a chunked body of 6 MiB in a part with an empty filename: 413 while streaming');
    is($res && $res->json && $res->json->{code}, 'PAYLOAD_TOO_LARGE', '... PAYLOAD_TOO_LARGE');
    ok(poll_until(5, sub { !grep { /\.part$/ } files_on_disk() }), '... no partial file');
    is_deeply([files_on_disk()], \@before, '... no file');
    is(rows(), $rows, '... no row');
}
{
    # chunks of every size: up to 128 bytes nginx appends them to the buffer
    # before, longer ones each get a buffer and a link of their own (which
    # go back to the request's pool as they are read)
    my ($body, $ct) = multipart(['image', 'mixed.png', padded($FILE{png}, $MiB), 'image/png']);
    my ($chunks, $k) = (q{}, 0);
    for (my $off = 0; $off < length $body; $k++) {
        my $len = (1, 128, 129, 4000, 7)[$k % 5];
        my $part = substr($body, $off, $len);
        $chunks .= sprintf("%x\r\n%s\r\n", length $part, $part);
        $off += length $part;
    }
    my $c = response(POST => '/api/messages/upload/image', as => 'nurse1',
                     headers => { 'Content-Type' => $ct, 'Transfer-Encoding' => 'chunked' },
                     body => $chunks . "0\r\n\r\n", timeout => 60);
    api_ok($c, "a 1 MiB image in $k chunks of 1, 128, 129, 4000 and 7 bytes: 201", status => 201);
    is($c->json && $c->json->{data}{sha256}, sha256_hex(padded($FILE{png}, $MiB)), '... the file whole');
}

# --- failures on our side leave nothing either ------------------------------------------
{
    my @before = files_on_disk();
    my $rows = rows();
    # the row cannot be written: the file renamed a moment ago goes again
    psql(q{ALTER TABLE uploads ADD CONSTRAINT test_no_uploads CHECK (size < 0) NOT VALID});
    my $r = upload('image', [['image', 'a.png', $FILE{png}]]);
    api_error_is($r, 500, 'INTERNAL', 'the database refuses the row: 500');
    psql(q{ALTER TABLE uploads DROP CONSTRAINT test_no_uploads});
    is_deeply([files_on_disk()], \@before, '... no file left');
    is(rows(), $rows, '... no row');

    # the file cannot be written (the workers are not root)
    chmod 0555, "$DATA/uploads/documents";
    my $w = upload('file', [['file', 'a.pdf', $FILE{pdf}]]);
    api_error_is($w, 500, 'INTERNAL', 'the directory is not writable: 500');
    is_deeply([files_on_disk()], \@before, '... no file left');
    is(rows(), $rows, '... no row');
    chmod 0777, "$DATA/uploads/documents";
    api_ok(upload('file', [['file', 'a.pdf', $FILE{pdf}]]), 'writable again: 201', status => 201);
}

# --- the row's INSERT never sent: the renamed file goes with the answer ------------------
# One connection, one place in the wait queue, the users cached: a request
# stuck on a locked table holds the connection, a second one the queue (the
# upload itself needs no statement but its INSERT).
{
    (my $conf = $CONF) =~ s/^(ahava_download_cache_ttl.*)$/$1\nahava_pg_pool_size 1;\nahava_pg_wait_queue 1;\nahava_pg_wait_timeout 30s;\nahava_user_cache_ttl 60s;/m;
    $conf =~ s/^(\s*location = \/_ahava_error)/    location = \/metrics { ahava_metrics; }\n$1/m;
    my $f = start_nginx($conf, name => 'full', workers => 1, vars => { DATA => $DATA });
    my $metric = sub {
        my ($v) = (response(GET => '/metrics', nginx => $f)->raw // '') =~ /^$_[0] (\d+)$/m;
        return $v // -1;
    };
    my %tok = map { $_ => token($ID{$_}) } qw(nurse1 admin);
    isnt(response(GET => "/api/messages/visit/$ID{visit1}", token => $tok{$_}, nginx => $f)->status,
         401, "full: $_ is known (and cached)") for sort keys %tok;
    my @before = files_on_disk();
    my $rows = rows();
    my $lock = lock_table('messages');
    my $stuck = Ahava::Test::HTTP::Conn->open($f->port, GET => "/api/messages/visit/$ID{visit1}",
                    headers => { Authorization => "Bearer $tok{admin}" });
    ok(poll_until(5, sub { Ahava::Test::HTTP::wait_all([$stuck], 0.05); pg_lock_waiters() >= 1 }),
       'full: a request holds the one connection, waiting on a locked table');
    my $queued = Ahava::Test::HTTP::Conn->open($f->port, GET => "/api/messages/visit/$ID{visit1}",
                     headers => { Authorization => "Bearer $tok{admin}" });
    ok(poll_until(5, sub { Ahava::Test::HTTP::wait_all([$queued], 0.05); $metric->('ahava_pg_waiters') == 1 }),
       'full: another one waits in the queue: it is full');

    # refused at once: the file was renamed before the INSERT was sent
    my ($body, $ct) = multipart(['image', 'refused.png', $FILE{png}, 'image/png']);
    my $r = response(POST => '/api/messages/upload/image', token => $tok{nurse1}, nginx => $f,
                     headers => { 'Content-Type' => $ct }, body => $body);
    api_error_is($r, 503, 'SERVICE_UNAVAILABLE', 'full: an upload whose row cannot be sent: 503');
    # gone with the request (under a sanitizer the answer can be read first)
    ok(poll_until(5, sub { join(' ', files_on_disk()) eq join(' ', @before) }), '... no file left')
        or diag(join ' ', files_on_disk());

    # the client goes while the INSERT waits for the connection
    $queued->abort;
    ok(poll_until(5, sub { $metric->('ahava_pg_waiters') == 0 }), 'full: the queue has room again');
    my $tok = $tok{nurse1};
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $f->port) or die $!;
    print {$s} "POST /api/messages/upload/image HTTP/1.1\r\nHost: x\r\n"
             . "Authorization: Bearer $tok\r\nContent-Type: $ct\r\n"
             . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
    my @new;
    ok(poll_until(5, sub { @new = grep { my $x = $_; !grep { $_ eq $x } @before } files_on_disk();
                           @new == 1 && $new[0] !~ /\.part$/ && $metric->('ahava_pg_waiters') == 1 }),
       'full: an upload renamed its file and waits for the connection: ' . join(' ', @new));
    close $s;
    ok(poll_until(5, sub { $metric->('ahava_pg_waiters') == 0 }), '... its client went: it left the queue');
    ok(poll_until(5, sub { !grep { my $x = $_; !grep { $_ eq $x } @before } files_on_disk() }),
       '... and its file went with it');

    $lock->release;
    Ahava::Test::HTTP::wait_all([$stuck], 10);
    is($stuck->response->status, 200, 'full: the stuck request ends once the lock goes');
    is(rows(), $rows, 'full: no row for either upload');
    api_ok(upload('image', [['image', 'a.png', $FILE{png}]]), 'and the main nginx still stores uploads', status => 201);
    ok($f->stop, "nginx 'full' exits");
    check_error_log($f);
}

# --- downloads ---------------------------------------------------------------------
my $img = $STORED{png}{url};       # nurse1's
my $doc = $STORED{pdf}{url};
{
    my $d = response(GET => $img, as => 'nurse1');
    is($d->status, 200, 'the uploader downloads the image');
    is($d->raw, $FILE{png}, '... its bytes');
    is($d->header('x-content-type-options'), 'nosniff', '... nosniff');
    is($d->header('cache-control'), 'private', '... Cache-Control: private');
    ok(!defined $d->header('content-disposition'), '... shown inline (an image)');
    like($d->header('content-type') // '', qr{^image/png}, '... image/png');
    my $p = response(GET => $doc, as => 'nurse1');
    is($p->header('content-disposition'), 'attachment', 'a document: Content-Disposition: attachment');

    api_error_is(response(GET => $img), 401, 'TOKEN_MISSING', 'no token: 401');
    api_error_is(response(GET => $img, as => 'patient2'), 404, 'NOT_FOUND', 'someone else: 404');
    api_error_is(response(GET => $img, as => 'doctor'), 404, 'NOT_FOUND', 'the doctor, not shown it: 404');
    is(response(GET => $img, as => 'admin')->status, 200, 'an admin: 200');
    api_error_is(response(GET => '/uploads/images/1700000000000-0123456789abcdef01234567.png',
                          as => 'admin'), 404, 'NOT_FOUND', 'an unknown name: 404, also for an admin');

    # the recipient of a message carrying it
    my $m = response(POST => '/api/messages', as => 'nurse1',
                     headers => { 'Content-Type' => 'application/json' },
                     body => $JSON->encode({ visitId => $ID{visit3}, recipientId => $ID{patient1},
                                             content => 'the photo', type => 'IMAGE',
                                             attachmentUrl => $img, attachmentType => 'image/png' }));
    api_ok($m, 'a message with the nurse\'s upload attached: 201', status => 201);
    is($m->json && $m->json->{data}{attachmentUrl}, $img, '... it carries the url');
    is(response(GET => $img, as => 'patient1')->status, 200, 'the recipient downloads it now');
    api_error_is(response(GET => $img, as => 'patient2'), 404, 'NOT_FOUND', 'still not a stranger');

    api_error_is(response(POST => '/api/messages', as => 'patient1',
                          headers => { 'Content-Type' => 'application/json' },
                          body => $JSON->encode({ visitId => $ID{visit3}, recipientId => $ID{nurse1},
                                                  content => 'mine?', attachmentUrl => $img })),
                 403, 'FORBIDDEN', "attaching someone else's upload: 403");
    api_error_is(response(POST => '/api/messages', as => 'nurse1',
                          headers => { 'Content-Type' => 'application/json' },
                          body => $JSON->encode({ visitId => $ID{visit3}, recipientId => $ID{patient1},
                                                  content => 'x',
                                                  attachmentUrl => '/uploads/images/1700000000000-0123456789abcdef01234567.png' })),
                 400, 'VALIDATION_ERROR', 'attaching an upload that does not exist: 400');
    api_error_is(response(POST => '/api/messages', as => 'nurse1',
                          headers => { 'Content-Type' => 'application/json' },
                          body => $JSON->encode({ visitId => $ID{visit3}, recipientId => $ID{patient1},
                                                  content => 'x', attachmentUrl => 'http://evil/x.png' })),
                 400, 'VALIDATION_ERROR', 'an attachment that is no upload url: 400');

    # a grant is kept a moment per worker (1 s here): the check runs once
    # for repeated downloads, and a revoked grant ends within the TTL
    SKIP: {
        skip 'pg_stat_statements not preloaded', 1 unless reset_statements();
        response(GET => $doc, as => 'admin') for 1 .. 5;
        is(statement_calls(like => '%storedPath%', except => 'INSERT'), 1,
           'five downloads in a row: one check');
    }
    my $mid = $m->json && $m->json->{data}{id};
    api_ok(response(DELETE => "/api/messages/$mid", as => 'nurse1'), 'the message is deleted');
    ok(poll_until(3, sub { response(GET => $img, as => 'patient1')->status == 404 }),
       '... and within the grant\'s second its recipient gets 404');

    # Range, suffix Range, 304
    my $len = length $FILE{png};
    my $rg = response(GET => $img, as => 'nurse1', headers => { Range => 'bytes=10-19' });
    is($rg->status, 206, 'Range bytes=10-19: 206');
    is($rg->raw, substr($FILE{png}, 10, 10), '... exactly those bytes');
    my $sf = response(GET => $img, as => 'nurse1', headers => { Range => 'bytes=-7' });
    is($sf->raw, substr($FILE{png}, -7), 'suffix Range bytes=-7: the last 7 bytes');
    like($sf->header('content-range') // '', qr{^bytes \d+-\d+/$len$}, '... with its Content-Range');
    my $past = response(GET => $img, as => 'nurse1', headers => { Range => "bytes=$len-" });
    is($past->status, 416, 'a Range past the end: 416');
    is_deeply([$past->json->{success}, $past->json->{code}, $past->json->{error}],
              [JSON::PP::false, 'VALIDATION_ERROR', 'Range not satisfiable'], '... as SPEC §4 JSON') or diag $past->raw;
    is($past->header('content-range'), "bytes */$len", '... whose Content-Range gives the size');
    is_deeply([$past->header('etag'), $past->header('cache-control')], [undef, 'no-store'],
              "... and none of the file's headers: no ETag, Cache-Control no-store");
    my $dpast = response(GET => $doc, as => 'nurse1', headers => { Range => 'bytes=100000000-' });
    is($dpast->status, 416, 'a document: 416 too');
    ok(!defined $dpast->header('content-disposition'), '... without Content-Disposition: attachment');
    my $etag = $d->header('etag');
    ok($etag, "an ETag ($etag)");
    my $nm = response(GET => $img, as => 'nurse1', headers => { 'If-None-Match' => $etag });
    is($nm->status, 304, 'If-None-Match: 304');
    is($nm->header('x-content-type-options'), 'nosniff', '... nosniff on the 304 too');

    # names that are not of the stored form never reach a file
    for my $p ('/uploads/images/..%2f..%2fetc%2fpasswd', '/uploads/images/../documents/x',
               '/uploads/images/', '/uploads/images', '/uploads/../uploads/images/x.png',
               '/uploads/images/%2e%2e', '/uploads/images/a.png%00.png',
               '/uploads/secret/1700000000000-0123456789abcdef01234567.png',
               $img . '/x', $img . '.part', '/uploads/images/' . ('1' x 13) . '-' . ('0' x 24) . '.PNG') {
        my $t = response(GET => $p, as => 'admin');
        ok($t->status == 404 && $t->is_json, "GET $p: a JSON 404") or diag($t->dump);
    }
    symlink('/etc/passwd', "$DATA/uploads/images/1700000000000-aaaaaaaaaaaaaaaaaaaaaaaa.png");
    psql(qq{INSERT INTO uploads (id, "ownerId", kind, "storedPath", "originalName", mimetype, size, sha256)
            VALUES ('cuploadsymlink00000000001', '$ID{nurse1}', 'image',
                    'images/1700000000000-aaaaaaaaaaaaaaaaaaaaaaaa.png', 'x.png', 'image/png', 1, 'x')});
    my $sl = response(GET => '/uploads/images/1700000000000-aaaaaaaaaaaaaaaaaaaaaaaa.png', as => 'nurse1');
    isnt($sl->status, 200, 'a symlink in the upload directory is not followed: ' . $sl->status);
    unlike($sl->raw, qr/root:/, '... nothing of its target');
}

# --- security events --------------------------------------------------------------------
ok(poll_until(10, sub { psql_value(q{SELECT count(*) FROM audit_logs WHERE action = 'UPLOAD_REJECTED'}) >= 10 }),
   'rejections are security events (UPLOAD_REJECTED rows)');
is(psql_value(q{SELECT count(*) FROM audit_logs WHERE action = 'UPLOAD_REJECTED'
                AND metadata->>'reason' IS NOT NULL AND metadata::text NOT LIKE '%alert(%'}),
   psql_value(q{SELECT count(*) FROM audit_logs WHERE action = 'UPLOAD_REJECTED'}),
   '... each with its reason, never the content');

done_ahava();
