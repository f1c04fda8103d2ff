# The API document (issue 13, "Operability"): docs/openapi.json is a valid
# OpenAPI 3.1 document (a real validator from npm: t/lib/openapi-check.js),
# the routes of the modules' C tables and the document's paths are the same
# set both ways, every documented route is served by a running nginx, real
# answers of every documented operation (successes and the main errors)
# validate against the document's schemas (Ajv, JSON Schema 2020-12) with a
# status and content type the document lists, WebSocket frames validate
# against its frame schemas, and GET /api/openapi.json serves the file as is.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::Util qw(slurp spew repo_root run_capture poll_until);
use Ahava::Test::WS qw(ws_raw);
use Compress::Zlib ();
use Digest::SHA qw(sha256_hex);
use File::Temp qw(tempdir);
use JSON::PP ();

my $REPO = repo_root();
my $DOC_FILE = "$REPO/docs/openapi.json";
my $CHECK = "$REPO/t/lib/openapi-check.js";
my $JSON = JSON::PP->new->utf8->canonical;
my $DOC = $JSON->decode(slurp($DOC_FILE) // die "no $DOC_FILE");

plan skip_all => 'no t/node_modules (bin/ahava test runs npm ci in t/)'
    unless -d "$REPO/t/node_modules/\@seriousme/openapi-schema-validator"
        && -d "$REPO/t/node_modules/ajv-formats";

setup();

my $DATA = tempdir('ahava-openapi-XXXXXX', TMPDIR => 1, CLEANUP => 1);
mkdir "$DATA/uploads";
mkdir "$DATA/uploads/$_" for qw(images documents exports);
chmod 0777, $DATA, map { "$DATA/uploads/$_" } '', qw(images documents exports);

# --- the nginx of conf.d/ahava.conf, in the test's paths ------------------------
sub conf {
    my (%o) = @_;
    my $metrics = $o{metrics} ? <<'_M_' : '';
    location = /metrics {
        ahava_metrics;
        allow  127.0.0.1;
        deny   all;
    }
_M_
    return <<"_EOC_";
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_upload_root       \$TEST_NGINX_DATA/uploads;

server {
    listen       127.0.0.1:\$TEST_NGINX_SERVER_PORT;
    server_name  _;
    client_max_body_size     64k;
    error_page 400 401 403 404 405 413 414 416 429 494 500 501 502 503 504
               505 /_ahava_error;

    location = /health { ahava_health; }
$metrics
    location = /api/openapi.json {
        alias        \$TEST_NGINX_REPO/docs/openapi.json;
        default_type application/json;
    }
    location /api/visits { ahava_visits; }
    location /api/exports/ { ahava_visits; }
    location = /ws { ahava_ws; }
    location /api/messages { ahava_messages; }
    location /api/messages/upload/ { ahava_upload; }
    location /uploads/ {
        ahava_download;
        root              \$TEST_NGINX_DATA;
        disable_symlinks  on;
        sendfile          on;
    }
    location / { return 404; }
    location = /_ahava_error { internal; ahava_error_page; }
}
_EOC_
}

my $n = start_nginx(conf(metrics => 1), workers => 1, vars => { DATA => $DATA });

# --- samples --------------------------------------------------------------------
my @SAMPLES;
my %COVERED;      # "get /api/visits" => { status => 1 }

# sample("GET /api/visits/{id}", $res, $name): the answer of that operation
# (for a 405 the operation is one the path documents: the path's answer)
sub sample {
    my ($op, $res, $name, %o) = @_;
    my ($m, $p) = split ' ', $op, 2;
    my $ct = $res->header('content-type') // '';
    my %s = (name => $name, method => lc $m, path => $p, status => $res->status + 0,
             contentType => $ct);
    if ($ct =~ m{^application/json}i) {
        my $j = eval { JSON::PP->new->utf8->allow_nonref->decode($res->raw) };
        if (defined $j || $res->raw eq 'null') { $s{body} = $j }
        else { $s{body} = $res->raw; $s{bodyNotJson} = JSON::PP::true }
    } elsif ($ct =~ m{^text/plain}i && $o{text}) {
        $s{body} = $res->raw;
    } else {
        $s{body} = undef;
    }
    $s{body} = $o{body} if exists $o{body};
    $s{expectInvalid} = JSON::PP::true if $o{bad};
    push @SAMPLES, \%s;
    $COVERED{"$s{method} $p"}{ $s{status} }++ unless $o{bad};
    return $res;
}

# a WebSocket frame (or any body) against a schema of the document
sub frame_sample {
    my ($schema, $body, $name, %o) = @_;
    push @SAMPLES, { name => $name, method => 'get', path => '/ws', status => 101,
                     contentType => 'application/json', body => $body,
                     schemaRef => "#/components/schemas/$schema",
                     ($o{bad} ? (expectInvalid => JSON::PP::true) : ()) };
}

sub json_req {
    my ($m, $p, $body, %o) = @_;
    return response($m => $p, %o, body => ref $body ? $JSON->encode($body) : $body,
                    headers => { 'Content-Type' => 'application/json', %{ $o{headers} || {} } });
}

# --- files ----------------------------------------------------------------------
# a real PNG (1x1, red): signature, IHDR, IDAT, IEND with their CRCs
sub png_chunk {
    my ($type, $data) = @_;
    return pack('N', length $data) . $type . $data
         . pack('N', Compress::Zlib::crc32($type . $data));
}
my $PNG = "\x89PNG\r\n\x1a\n"
        . png_chunk('IHDR', pack('NNCCCCC', 1, 1, 8, 2, 0, 0, 0))
        . png_chunk('IDAT', Compress::Zlib::compress("\x00\xff\x00\x00"))
        . png_chunk('IEND', '');

sub multipart {
    my ($field, $filename, $content) = @_;
    my $b = 'AhavaOpenApi' . int(rand 1e9);
    return ("--$b\r\nContent-Disposition: form-data; name=\"$field\"; filename=\"$filename\"\r\n"
            . "Content-Type: application/octet-stream\r\n\r\n$content\r\n--$b--\r\n",
            "multipart/form-data; boundary=$b");
}

sub upload {
    my ($endpoint, $field, $filename, $content, %o) = @_;
    my ($body, $ct) = multipart($field, $filename, $content);
    return response(POST => "/api/messages/upload/$endpoint", as => $o{as} // 'nurse1',
                    headers => { 'Content-Type' => $ct }, body => $body, timeout => 30);
}

# --- WebSocket sockets that collect the events of the whole test ---------------
my %WS;
for my $who (qw(patient1 nurse1)) {
    my $c = ws_raw(as => $who);
    ok($c->upgraded, "a WebSocket for $who: 101") or diag($c->response->dump);
    $WS{$who} = $c;
}
frame_sample('WsServerFrame', { type => 'NEW_MESSAGE', data => { id => 'x' }, timestamp => 'now' },
             'a frame of the wrong shape', bad => 1);

# ================================================================================
# Visits
# ================================================================================
my ($V1, $V2, $V3, $V4, $V5) = map { $ID{"visit$_"} } 1 .. 5;

{
    my $r = sample('GET /api/visits', response(GET => '/api/visits', as => 'admin'), 'admin lists visits');
    api_ok($r, 'GET /api/visits as admin: 200');
    # a control: the same answer with a visit's status removed must be refused
    my $j = $r->json;
    if ($j && ref $j->{data} eq 'ARRAY' && @{ $j->{data} }) {
        my %copy = %$j;
        $copy{data} = [ map { my %v = %$_; delete $v{status}; \%v } @{ $j->{data} } ];
        sample('GET /api/visits', $r, 'a visit without its status', bad => 1, body => \%copy);
    }
}
sample('GET /api/visits', response(GET => '/api/visits?status=SCHEDULED&sortBy=status&sortOrder=asc&limit=2&offset=0',
                                   as => 'nurse1'), 'nurse lists with every argument');
sample('GET /api/visits', response(GET => '/api/visits?limit=0', as => 'admin'), 'limit out of range');
sample('GET /api/visits', response(GET => '/api/visits?bogus=1', as => 'admin'), 'an unknown argument');
sample('GET /api/visits', response(GET => '/api/visits'), 'no token');
sample('GET /api/visits', response(GET => '/api/visits', token => token($ID{admin}, exp => -60)), 'expired token');
sample('GET /api/visits', response(GET => '/api/visits', token => 'not.a.jwt'), 'a bad token');
sample('GET /api/visits', response(DELETE => '/api/visits', as => 'admin'), 'DELETE on the list');
sample('GET /api/visits', json_req(GET => '/api/visits', '{"x":"' . ('a' x 70_000) . '"}', as => 'admin'),
       'a 70 KB body');

sample('GET /api/visits/{id}', response(GET => "/api/visits/$V4", as => 'doctor'), 'visit detail (report, payments, messages)');
sample('GET /api/visits/{id}', response(GET => "/api/visits/$V1", as => 'patient1'), 'visit detail (patient)');
sample('GET /api/visits/{id}', response(GET => "/api/visits/$V1", as => 'nurse2'), "another nurse's visit");
sample('GET /api/visits/{id}', response(GET => '/api/visits/bad!id', as => 'admin'), 'a malformed id');
sample('GET /api/visits/{id}', response(POST => "/api/visits/$V1", as => 'admin'), 'POST on a visit');

my $ST = '/api/visits/{id}/status';
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", { status => 'EN_ROUTE' }, as => 'nurse1'),
       'SCHEDULED -> EN_ROUTE');
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", { status => 'SCHEDULED' }, as => 'nurse1'),
       'EN_ROUTE -> SCHEDULED');
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", { status => 'ARRIVED' }, as => 'patient1'),
       'a patient moves the visit');
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", { status => 'NOPE' }, as => 'nurse1'),
       'an unknown status');
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", { status => 'ARRIVED', extra => 1 }, as => 'nurse1'),
       'an unknown field');
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", '{"status":', as => 'nurse1'), 'not JSON');
sample("PATCH $ST", response(PATCH => "/api/visits/$V1/status", as => 'nurse1', body => 'status=ARRIVED',
                             headers => { 'Content-Type' => 'application/x-www-form-urlencoded' }),
       'a form body');
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", '{"x":"' . ('a' x 70_000) . '"}', as => 'nurse1'),
       'a 70 KB body');
sample("PATCH $ST", json_req(PATCH => "/api/visits/$V1/status", { status => 'ARRIVED' }, as => 'nurse2'),
       "another nurse's visit");
sample("PATCH $ST", json_req(POST => "/api/visits/$V1/status", { status => 'ARRIVED' }, as => 'nurse1'),
       'POST instead of PATCH');

my $LOC = '/api/visits/{id}/location';
sample("POST $LOC", json_req(POST => "/api/visits/$V1/location", { lat => -26.1, lng => 28.05 }, as => 'nurse1'),
       'the nurse on her way');
sample("POST $LOC", json_req(POST => "/api/visits/$V4/location", { lat => -26.1, lng => 28.05 }, as => 'nurse1'),
       'a completed visit');
sample("POST $LOC", json_req(POST => "/api/visits/$V1/location", { lat => -26.1, lng => 28.05 }, as => 'admin'),
       'an admin');
sample("POST $LOC", json_req(POST => "/api/visits/$V1/location", { lat => 91, lng => 0 }, as => 'nurse1'),
       'lat out of range');

my $REP = '/api/visits/{id}/nurse-report';
sample("POST $REP", json_req(POST => "/api/visits/$V3/nurse-report", { nurseReport => 'Dressing changed; healing well.' },
                             as => 'nurse1'), 'the report of a visit in progress');
sample("POST $REP", json_req(POST => "/api/visits/$V1/nurse-report", { nurseReport => 'Too early.' }, as => 'nurse1'),
       'a visit not started');
sample("POST $REP", json_req(POST => "/api/visits/$V3/nurse-report", { nurseReport => '' }, as => 'nurse1'),
       'an empty report');
sample("POST $REP", json_req(POST => "/api/visits/$V3/nurse-report", { nurseReport => 'x' }, as => 'patient1'),
       'a patient');

my $REV = '/api/visits/{id}/doctor-review';
sample("POST $REV", json_req(POST => "/api/visits/$V4/doctor-review", { doctorReview => 'Good care.', doctorRating => 5 },
                             as => 'doctor'), 'the doctor reviews');
sample("POST $REV", json_req(POST => "/api/visits/$V1/doctor-review", { doctorReview => 'No report yet.', doctorRating => 3 },
                             as => 'admin'), 'a visit without a report');
sample("POST $REV", json_req(POST => "/api/visits/$V4/doctor-review", { doctorReview => 'x', doctorRating => 6 },
                             as => 'doctor'), 'a rating of 6');
sample("POST $REV", json_req(POST => "/api/visits/$V4/doctor-review", { doctorReview => 'x', doctorRating => 4 },
                             as => 'nurse1'), 'a nurse');

# over the WebSocket too: the nurse's position and her typing (to patient1)
$WS{nurse1}->send_json({ type => 'LOCATION_UPDATE', data => { visitId => $V1, lat => -26.105, lng => 28.051 } });
$WS{nurse1}->send_json({ type => 'MESSAGE_TYPING', data => { visitId => $V3, recipientId => $ID{patient1}, isTyping => JSON::PP::true } });

my $AN = '/api/visits/{id}/assign-nurse';
my $AD = '/api/visits/{id}/assign-doctor';
sample("POST $AN", json_req(POST => "/api/visits/$V1/assign-nurse", { nurseId => $ID{nurse2} }, as => 'admin'),
       'admin assigns nurse2');
sample("POST $AN", json_req(POST => "/api/visits/$V1/assign-nurse", { nurseId => $ID{nurse1} }, as => 'admin'),
       'admin assigns nurse1 back');
sample("POST $AN", json_req(POST => "/api/visits/$V1/assign-nurse", { nurseId => $ID{patient1} }, as => 'admin'),
       'a patient as nurse');
sample("POST $AN", json_req(POST => "/api/visits/$V1/assign-nurse", { nurseId => $ID{nurse2} }, as => 'nurse1'),
       'a nurse assigns');
sample("POST $AN", json_req(POST => "/api/visits/$V5/assign-nurse", { nurseId => $ID{nurse1} }, as => 'admin'),
       'a cancelled visit');
sample("POST $AD", json_req(POST => "/api/visits/$V1/assign-doctor", { doctorId => $ID{doctor} }, as => 'admin'),
       'admin assigns the doctor');
sample("POST $AD", json_req(POST => "/api/visits/$V1/assign-doctor", { doctorId => 'no such!' }, as => 'admin'),
       'a malformed id in the body');
sample("POST $AD", json_req(POST => "/api/visits/$V1/assign-doctor", { doctorId => $ID{doctor} }, as => 'doctor'),
       'a doctor assigns');
sample("POST $AD", json_req(POST => "/api/visits/$V4/assign-doctor", { doctorId => $ID{doctor} }, as => 'admin'),
       'a completed visit');

my $CA = '/api/visits/{id}/cancel';
sample("POST $CA", json_req(POST => "/api/visits/$V2/cancel", {}, as => 'patient1'), "another patient's visit");
sample("POST $CA", json_req(POST => "/api/visits/$V1/cancel", { reason => 'Feeling better' }, as => 'nurse1'),
       'the nurse cancels');
sample("POST $CA", json_req(POST => "/api/visits/$V1/cancel", { reason => 'Feeling better' }, as => 'patient1'),
       'the patient cancels while EN_ROUTE');
sample("POST $CA", response(POST => "/api/visits/$V1/cancel", as => 'admin'), 'again, without a body');
sample("POST $CA", json_req(POST => "/api/visits/$V1/cancel", { reason => '' }, as => 'admin'), 'an empty reason');

# ================================================================================
# Exports
# ================================================================================
my $EX = '/api/visits/{id}/export';
my $exp = sample("POST $EX", response(POST => "/api/visits/$V4/export", as => 'doctor'), 'the doctor asks for a report');
my $EXPORT = $exp->json && $exp->json->{data} && $exp->json->{data}{exportJobId};
ok($EXPORT, 'an export job id') or diag($exp->dump);
sample("POST $EX", response(POST => "/api/visits/$V4/export", as => 'nurse2'), "not nurse2's visit");
sample("POST $EX", response(POST => "/api/visits/$V4/export?x=1", as => 'doctor'), 'an argument');
sample("POST $EX", response(GET => "/api/visits/$V4/export", as => 'doctor'), 'GET');

my $EG = '/api/exports/{id}';
sample("GET $EG", response(GET => "/api/exports/$EXPORT", as => 'doctor'), 'its owner, PENDING');
sample("GET $EG", response(GET => "/api/exports/$EXPORT", as => 'nurse1'), 'not its owner');
# as ahava-worker leaves it once rendered (t/700 runs the daemon itself)
my $PDF = "%PDF-1.4\n% a stand-in for the worker's report\n%%EOF\n";
my $PDF_NAME = sprintf('%013d-%s.pdf', int(time * 1000), 'ab' x 12);
spew("$DATA/uploads/exports/$PDF_NAME", $PDF);
psql(sprintf(q{UPDATE export_jobs SET status = 'COMPLETED', "fileUrl" = '/uploads/exports/%s',
               "fileSize" = %d, checksum = '%s', "completedAt" = LOCALTIMESTAMP(3) WHERE id = '%s'},
             $PDF_NAME, length $PDF, sha256_hex($PDF), $EXPORT));
sample("GET $EG", response(GET => "/api/exports/$EXPORT", as => 'admin'), 'an admin, COMPLETED');
sample("GET $EG", response(DELETE => "/api/exports/$EXPORT", as => 'admin'), 'DELETE');

my $DE = '/uploads/exports/{filename}';
sample("GET $DE", response(GET => "/uploads/exports/$PDF_NAME", as => 'doctor'), 'the owner downloads the PDF');
sample("GET $DE", response(GET => "/uploads/exports/$PDF_NAME", as => 'nurse1'), 'not its owner');
sample("GET $DE", response(GET => "/uploads/exports/$PDF_NAME"), 'no token');

# ================================================================================
# Uploads and downloads
# ================================================================================
my $UI = '/api/messages/upload/image';
my $UF = '/api/messages/upload/file';
my $img = sample("POST $UI", upload('image', 'image', 'dot.png', $PNG), 'a PNG');
my $IMG = $img->json && $img->json->{data} && $img->json->{data}{url};
ok($IMG, 'an image url') or diag($img->dump);
my $pimg = sample("POST $UI", upload('image', 'image', 'mine.png', $PNG, as => 'patient1'), "the patient's PNG");
my $PIMG = $pimg->json && $pimg->json->{data} && $pimg->json->{data}{url};
sample("POST $UI", upload('image', 'image', 'dot.jpg', $PNG), 'a PNG named .jpg');
sample("POST $UI", upload('image', 'image', 'page.png', '<html><script>alert(1)</script></html>'), 'HTML');
sample("POST $UI", upload('image', 'file', 'dot.png', $PNG), 'the wrong field');
sample("POST $UI", response(POST => "$UI", as => 'nurse1', body => 'x',
                            headers => { 'Content-Type' => 'text/plain' }), 'not multipart');
sample("POST $UI", upload('image', 'image', 'big.png', $PNG . ("\0" x (5 * 1024 * 1024 + 70_000))),
       'over 5 MiB');
sample("POST $UI", upload('image', 'image', 'dot.png', $PNG, as => 'nobody'), 'an unknown user');
sample("POST $UI", response(GET => "$UI", as => 'nurse1'), 'GET');
my $doc = sample("POST $UF", upload('file', 'file', 'notes.txt', "Dressing changed.\nNext visit in 3 days.\n"),
                 'a text file');
my $DOCURL = $doc->json && $doc->json->{data} && $doc->json->{data}{url};
ok($DOCURL, 'a document url') or diag($doc->dump);
sample("POST $UF", upload('file', 'file', 'tool.exe', "MZ\x90\x00" . ("\0" x 64)), 'an executable');

my $DI = '/uploads/images/{filename}';
my $DD = '/uploads/documents/{filename}';
my $dl = sample("GET $DI", response(GET => $IMG, as => 'nurse1'), 'the uploader downloads');
is($dl->raw, $PNG, 'the download is the bytes uploaded');
my $etag = $dl->header('etag');
sample("GET $DI", response(GET => $IMG, as => 'nurse1', headers => { 'If-None-Match' => $etag // '"x"' }),
       'If-None-Match');
sample("GET $DI", response(GET => $IMG, as => 'nurse1', headers => { Range => 'bytes=0-7' }), 'a Range');
sample("GET $DI", response(GET => $IMG, as => 'nurse1', headers => { Range => 'bytes=100000-' }),
       'a Range past the end');
sample("GET $DI", response(GET => $IMG, as => 'nurse2'), 'not allowed');
sample("GET $DI", response(GET => '/uploads/images/..%2f..%2fetc%2fpasswd', as => 'admin'), 'traversal');
sample("GET $DI", response(GET => $IMG), 'no token');
sample("GET $DI", response(POST => $IMG, as => 'nurse1'), 'POST');
sample("GET $DD", response(GET => $DOCURL, as => 'admin'), 'an admin downloads a document');

# ================================================================================
# Messages
# ================================================================================
my $M = '/api/messages';
my $sent = sample("POST $M", json_req(POST => $M, { visitId => $V3, recipientId => $ID{patient1},
                                                      content => 'On my way — ngiyabonga.' }, as => 'nurse1'),
                  'the nurse writes');
my $NEW = $sent->json && $sent->json->{data} && $sent->json->{data}{id};
ok($NEW, 'a message id') or diag($sent->dump);
sample("POST $M", json_req(POST => $M, { visitId => $V3, recipientId => $ID{patient1}, content => 'A photo',
                                          type => 'IMAGE', attachmentUrl => $IMG, attachmentType => 'image/png' },
                           as => 'nurse1'), 'with her own image');
sample("POST $M", json_req(POST => $M, { visitId => $V3, recipientId => $ID{patient1}, content => 'Yours?',
                                          type => 'IMAGE', attachmentUrl => $PIMG // '/uploads/images/x' },
                           as => 'nurse1'), "with the patient's image");
sample("POST $M", json_req(POST => $M, { visitId => $V3, recipientId => $ID{nurse1}, content => 'Me' }, as => 'nurse1'),
       'to herself');
sample("POST $M", json_req(POST => $M, { visitId => $V2, recipientId => $ID{patient2}, content => 'Hi' }, as => 'nurse1'),
       "not her visit");
sample("POST $M", json_req(POST => $M, { visitId => $V3, recipientId => $ID{patient1}, content => 'x', type => 'SYSTEM' },
                           as => 'nurse1'), 'type SYSTEM');
sample("POST $M", response(POST => $M, as => 'nurse1', body => 'hello', headers => { 'Content-Type' => 'text/plain' }),
       'text/plain');
sample("POST $M", response(GET => $M, as => 'nurse1'), 'GET');

my $ML = '/api/messages/visit/{visitId}';
sample("GET $ML", response(GET => "/api/messages/visit/$V3", as => 'patient1'), 'the conversation');
sample("GET $ML", response(GET => "/api/messages/visit/$V3?unreadOnly=true&limit=5&offset=0", as => 'patient1'),
       'unread only');
sample("GET $ML", response(GET => "/api/messages/visit/$V3?unreadOnly=yes", as => 'patient1'), 'unreadOnly=yes');
sample("GET $ML", response(GET => "/api/messages/visit/$V3", as => 'nurse2'), 'not a participant');
sample("GET $ML", response(GET => "/api/messages/visit/$V3"), 'no token');

my $MP = '/api/messages/visit/{visitId}/participants';
sample("GET $MP", response(GET => "/api/messages/visit/$V4/participants", as => 'admin'), 'three participants');
sample("GET $MP", response(GET => "/api/messages/visit/$V3/participants", as => 'nurse1'), 'no doctor');
sample("GET $MP", response(GET => "/api/messages/visit/$V3/participants", as => 'nurse2'), 'not a participant');

my $MU = '/api/messages/unread/count';
sample("GET $MU", response(GET => $MU, as => 'patient1'), "the patient's unread");
sample("GET $MU", response(GET => "$MU?visitId=$V3", as => 'patient1'), 'an argument');

my $MR = '/api/messages/read';
sample("POST $MR", json_req(POST => $MR, { messageIds => [ $ID{message3}, $NEW // $ID{message1} ] }, as => 'patient1'),
       'the patient reads');
sample("POST $MR", json_req(POST => $MR, { messageIds => [] }, as => 'patient1'), 'no ids');
sample("POST $MR", json_req(GET => $MR, { messageIds => [ $ID{message3} ] }, as => 'patient1'), 'GET');

my $MD = '/api/messages/{id}';
sample("DELETE $MD", response(DELETE => "/api/messages/$NEW", as => 'patient1'), 'the recipient deletes');
sample("DELETE $MD", response(DELETE => "/api/messages/$NEW", as => 'nurse1'), 'the sender deletes');
sample("DELETE $MD", response(DELETE => "/api/messages/$NEW", as => 'nurse1'), 'again');
sample("DELETE $MD", response(GET => "/api/messages/$ID{message1}", as => 'nurse1'), 'GET');

# ================================================================================
# Real time: the handshake's answers and the frames
# ================================================================================
sample('GET /ws', response(GET => '/ws', as => 'admin'), 'not a handshake');
sample('GET /ws', ws_raw()->response, 'a handshake without a token');
sample('GET /ws', ws_raw(token => token($ID{admin}, exp => -5))->response, 'an expired token');
sample('GET /ws', ws_raw(as => 'admin', version => 8)->response, 'version 8');
sample('GET /ws', ws_raw(as => 'patient1', query => [since => 'cnosuchmessage0000000001'])->response,
       'since names no message of hers');
sample('GET /ws', ws_raw(as => 'patient1', query => [bogus => 1])->response, 'an unknown argument');
sample('GET /ws', ws_raw(as => 'admin', method => 'POST')->response, 'POST');
{
    my $c = ws_raw(token => token($ID{patient1}), via => 'protocol', query => [since => $ID{message1}]);
    sample('GET /ws', $c->response, 'the bearer subprotocol and since');
    is($c->header('sec-websocket-protocol'), 'bearer', '... the bearer subprotocol selected');
    my $f = $c->next_json(5);
    ok($f && ($f->{type} // '') eq 'NEW_MESSAGE', '... the replay starts with NEW_MESSAGE');
    frame_sample('WsServerFrame', $f, 'a replayed frame') if ref $f eq 'HASH' && $f->{type};
    $c->close_socket;
    my $q = ws_raw(token => token($ID{nurse1}), via => 'query');
    sample('GET /ws', $q->response, 'the token query argument');
    $q->close_socket;
}
frame_sample('WsClientFrame', { type => 'LOCATION_UPDATE', data => { visitId => $V1, lat => 1, lng => 2 } },
             'a client LOCATION_UPDATE');
frame_sample('WsClientFrame', { type => 'MESSAGE_TYPING', data => { visitId => $V3 } },
             'a MESSAGE_TYPING without its fields', bad => 1);

# PING and an unknown frame on each socket, then everything they got: the
# events of the test, in whatever order Redis delivered them
my %WANT = (
    patient1 => [qw(VISIT_STATUS_UPDATED NURSE_LOCATION_UPDATE TYPING_INDICATOR NURSE_REPORT_ADDED
                    NURSE_ASSIGNED DOCTOR_ASSIGNED NEW_MESSAGE MESSAGE_DELETED PONG ERROR)],
    nurse1   => [qw(DOCTOR_REVIEW_ADDED VISIT_CANCELLED MESSAGES_READ PONG ERROR)],
);
my %SEEN_TYPES;
for my $who (sort keys %WS) {
    my $c = $WS{$who};
    $c->send_json({ type => 'NOT_A_FRAME', data => {} });
    $c->send_json({ type => 'PING' });
    my (%seen, @frames);
    # bounded: each read waits for the socket at most 0.5 s, 15 s in all
    poll_until(15, sub {
        while (my $f = $c->read_frame(0.5)) {
            last if $f->{eof};
            next unless $f->{opcode} == 1 && ref $f->{json} eq 'HASH';
            push @frames, $f->{json};
            $seen{ $f->{json}{type} // '' }++;
        }
        return !grep { !$seen{$_} } @{ $WANT{$who} };
    });
    my @missing = grep { !$seen{$_} } @{ $WANT{$who} };
    ok(!@missing, "$who\'s socket got every frame expected (" . scalar(@frames) . ' frames)')
        or diag('missing: ' . join(', ', @missing) . '; got: ' . join(', ', sort keys %seen));
    frame_sample('WsServerFrame', $_, "$who got $_->{type}") for @frames;
    $SEEN_TYPES{$_}++ for keys %seen;
    $c->close_socket;
}

# ================================================================================
# Operations
# ================================================================================
sample('GET /health', response(GET => '/health'), 'health');
sample('GET /health', response(POST => '/health'), 'POST');
sample('GET /health', response(GET => '/health?verbose=1'), 'an argument');
{
    my $r = sample('GET /api/openapi.json', response(GET => '/api/openapi.json'), 'the document');
    is($r->status, 200, 'GET /api/openapi.json: 200');
    like($r->header('content-type') // '', qr{^application/json\b}, '... application/json');
    ok($r->raw eq slurp($DOC_FILE), '... byte for byte docs/openapi.json')
        or diag('served ' . length($r->raw) . ' bytes, the file has ' . length(slurp($DOC_FILE)));
    sample('GET /api/openapi.json', response(POST => '/api/openapi.json'), 'POST');
    sample('GET /api/openapi.json', response(GET => '/api/openapi.json', headers => { 'If-None-Match' => $r->header('etag') // '"x"' }),
           'If-None-Match');
}
{
    my $r = sample('GET /metrics', response(GET => '/metrics'), 'metrics', text => 1);
    is($r->status, 200, 'GET /metrics: 200');
    like($r->header('content-type') // '', qr{^text/plain\b}, '... text/plain');
}

# ================================================================================
# Routes: the C tables and the document, both ways, and each one served
# ================================================================================
my %METHOD = (GET => 'get', POST => 'post', PATCH => 'patch', PUT => 'put', DELETE => 'delete');
my (%SERVED, %TABLES);
for my $file (sort glob "$REPO/ngx_ahava_*/*.c") {
    my $src = slurp($file);
    while ($src =~ /ngx_ahava_route_t\s+(\w+)\[\]\s*=\s*\{(.*?)\n\};/sg) {
        my ($table, $body) = ($1, $2);
        $TABLES{$table}++;
        while ($body =~ /\{\s*((?:NGX_HTTP_\w+\s*\|?\s*)+),\s*"([^"]+)"/g) {
            my ($methods, $path) = ($1, $2);
            my $norm = join '/', map { $_ eq ':' || $_ eq '*' ? '{}' : $_ } split m{/}, $path, -1;
            for my $m ($methods =~ /NGX_HTTP_(\w+)/g) {
                my $lm = $METHOD{$m} or do { fail("unknown method NGX_HTTP_$m in $table"); next };
                $SERVED{"$lm $norm"} = "$table in " . ($file =~ s{^\Q$REPO\E/}{}r);
            }
        }
    }
}
my @want_tables = qw(ngx_ahava_visits_routes ngx_ahava_messages_routes ngx_ahava_upload_routes
                     ngx_ahava_download_routes ngx_ahava_ws_routes ngx_ahava_health_routes);
ok(!grep({ !$TABLES{$_} } @want_tables),
   scalar(keys %SERVED) . ' routes in ' . scalar(keys %TABLES) . " route tables of the modules' C sources")
    or diag('tables found: ' . join(', ', sort keys %TABLES));

# served by nginx itself, not by a route table (conf.d/ahava.conf)
my %NGINX_LEVEL = (
    'get /api/openapi.json' => 'location = /api/openapi.json (alias docs/openapi.json)',
    'get /metrics'          => 'location = /metrics (ahava_metrics)',
);
my $CONFD = slurp("$REPO/conf.d/ahava.conf") // '';
for my $r (sort keys %NGINX_LEVEL) {
    my ($path) = $r =~ m{^\w+ (\S+)};
    like($CONFD, qr#location\s*=\s*\Q$path\E\s*\{#, "conf.d/ahava.conf has a location for $path");
}
like($CONFD, qr#location\s*=\s*/api/openapi\.json\s*\{[^}]*alias\s+\S*/docs/openapi\.json;[^}]*default_type\s+application/json;#s,
     'conf.d/ahava.conf serves docs/openapi.json as application/json');
$SERVED{$_} //= $NGINX_LEVEL{$_} for keys %NGINX_LEVEL;

my %DOCUMENTED;
for my $p (keys %{ $DOC->{paths} }) {
    for my $m (grep { /^(get|put|post|delete|patch|head|options|trace)$/ } keys %{ $DOC->{paths}{$p} }) {
        (my $norm = $p) =~ s/\{[^}]+\}/{}/g;
        $DOCUMENTED{"$m $norm"} = "$m $p";
    }
}
my @undocumented = grep { !$DOCUMENTED{$_} } sort keys %SERVED;
my @unserved = grep { !$SERVED{$_} } sort keys %DOCUMENTED;
ok(!@undocumented, 'every route the modules serve is in docs/openapi.json')
    or diag(join "\n", map { "not documented: $_ ($SERVED{$_})" } @undocumented);
ok(!@unserved, 'every route in docs/openapi.json is served')
    or diag(join "\n", map { "not served: $DOCUMENTED{$_}" } @unserved);

# each documented (method, path) against the running nginx, with real ids:
# never the router's "no such route" (404 "Not found") nor a 405
my %FILL = (
    '/api/visits/{id}'              => $V4,
    '/api/exports/{id}'             => $EXPORT,
    '/api/messages/{id}'            => $ID{message4},
    '/api/messages/visit/{visitId}' => $V3,
    '/uploads/images/{filename}'    => ($IMG // '') =~ s{.*/}{}r,
    '/uploads/documents/{filename}' => ($DOCURL // '') =~ s{.*/}{}r,
    '/uploads/exports/{filename}'   => $PDF_NAME,
);
# "/api/visits/{id}/status" -> "/api/visits/<visit 4>/status"
sub fill {
    my ($p) = @_;
    my ($url, $tpl) = ('', '');
    while ($p =~ m{\G(.*?)(\{\w+\})}gc) {
        $url .= $1;
        $tpl .= $1 . $2;
        $url .= $FILL{$tpl} // 'x';
    }
    return $url . substr($p, pos($p) // 0);
}
for my $key (sort values %DOCUMENTED) {
    my ($m, $p) = split ' ', $key, 2;
    my $url = fill($p);
    my %body = $m =~ /^(post|patch|put)$/ && $p !~ /upload/
             ? (body => '{}', headers => { 'Content-Type' => 'application/json' }) : ();
    my $r = response(uc $m => $url, as => 'admin', %body);
    my $j = $r->json;
    my $router = ($r->status == 404 && ref $j eq 'HASH' && ($j->{error} // '') eq 'Not found')
              || $r->status == 405;
    ok(!$router, "served: \U$m\E $url (" . $r->status . ')') or diag($r->dump);
    sample("\U$m\E $p", $r, 'served by nginx') if $p !~ /^\/metrics/;
}

# ================================================================================
# Every sample against the document, in one node process
# ================================================================================
my $file = $n->servroot . '/openapi-samples.json';
spew($file, $JSON->encode(\@SAMPLES));
my ($rc, $out) = run_capture(['node', $CHECK, $DOC_FILE, $file]);
my ($results, $plan) = (0, undef);
my @lines = split /\n/, $out;
for (my $i = 0; $i < @lines; $i++) {
    my $l = $lines[$i];
    if ($l =~ /^1\.\.(\d+)$/) { $plan = $1; next }
    if (my ($not, $name) = $l =~ /^(not )?ok \d+ - (.*)$/) {
        $results++;
        my @diag;
        push @diag, $lines[++$i] =~ s/^# ?//r while $i + 1 < @lines && $lines[$i + 1] =~ /^#/;
        ok(!$not, "openapi-check: $name") or diag(join "\n", @diag);
        next;
    }
    diag("openapi-check: $l") if length $l;
}
is($rc, 0, 'openapi-check.js exited 0') or diag($out);
ok(defined $plan && $plan == $results && $results == 5 + @SAMPLES,
   "openapi-check.js checked the document and all " . scalar(@SAMPLES) . ' samples')
    or diag("plan " . ($plan // 'none') . ", $results results for " . scalar(@SAMPLES) . ' samples');

# every operation answered at least once with a success its document lists,
# and the main errors seen somewhere
my @ops = map { my ($m, $p) = split ' ', $_, 2; [$m, $p] } sort values %DOCUMENTED;
my @no_success;
for my $op (@ops) {
    my ($m, $p) = @$op;
    my $st = $COVERED{"$m $p"} || {};
    push @no_success, "\U$m\E $p" unless grep { $_ < 300 } keys %$st;
}
ok(!@no_success, 'every documented operation has a success sample')
    or diag("without one: @no_success");
my %all = map { %{ $COVERED{$_} } } keys %COVERED;
my @missing_status = grep { !$all{$_} } qw(101 200 201 202 206 304 400 401 403 404 405 409 413 415 426);
ok(!@missing_status, 'samples of 101, 200, 201, 202, 206, 304, 400, 401, 403, 404, 405, 409, 413, 415, 426')
    or diag("missing: @missing_status");
my @types = grep { !$SEEN_TYPES{$_} } grep { $_ ne 'EXPORT_READY' }
    @{ $DOC->{components}{schemas}{WsServerFrame}{properties}{type}{enum} };
ok(!@types, 'a sample of every server frame type but EXPORT_READY (the daemon\'s: t/700)')
    or diag("missing: @types");
note(scalar(@ops) . ' documented operations, ' . scalar(@SAMPLES) . ' samples');

done_ahava();
