#!/usr/bin/perl
# vcs-worker's uploadpack.packObjectsHook (src/git/pack-cache.ts): @ARGV is git's pack-objects
# call. One process and no modules: on these machines every process and every module loaded
# costs milliseconds, more than replaying a cached pack (sh + curl cost ~120 ms CPU per fetch).
# The call goes to the worker; whatever keeps it from the cache, pack-objects runs here.
my $in = '';
1 while sysread(STDIN, $in, 65536, length $in);

# pack-objects run here, on the input read above
sub direct {
  if (length($in) <= 65536) {
    # the input fits the pipe's buffer (64 KiB on Linux): written before the exec, no writer process
    pipe(my $r, my $w) or die "pipe: $!";
    syswrite($w, $in) == length($in) or die "pipe: $!";
    close($w);
    open(STDIN, '<&', $r) or die "stdin: $!";
  } else {
    my $pid = open(my $w, '|-');
    defined $pid or die "fork: $!";
    if ($pid) { print $w $in; close($w); exit($? >> 8 || ($? & 127 ? 1 : 0)) }
  }
  exec { $ARGV[0] } @ARGV or die "exec $ARGV[0]: $!";
}

my ($port, $path) = ($ENV{VCS_WORKER_PACK_URL} // '') =~ m{^http://127\.0\.0\.1:(\d+)(/[!-~]*)$} or direct();
socket(my $s, 2, 1, 6) or direct(); # AF_INET, SOCK_STREAM, TCP
connect($s, pack('S n C4 x8', 2, $port, 127, 0, 0, 1)) or direct();
my $cwd = readlink('/proc/self/cwd') // '';
my $req = "POST $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
  . "X-VCS-Token: " . ($ENV{VCS_WORKER_PACK_TOKEN} // '') . "\r\nX-VCS-Cwd: $cwd\r\nX-VCS-Args: @ARGV\r\n"
  . "Content-Length: " . length($in) . "\r\n\r\n" . $in;
while (length $req) { my $n = syswrite($s, $req) or direct(); substr($req, 0, $n, '') }

my $buf = '';
my $fill = sub { sysread($s, $buf, 262144, length $buf) };
my $end;
while (($end = index($buf, "\r\n\r\n")) < 0) { length($buf) < 65536 && $fill->() or direct() }
my ($status, @lines) = split /\r\n/, substr($buf, 0, $end);
substr($buf, 0, $end + 4, '');
my %h = map { /^([^:]+):\s*(.*)$/ ? (lc $1, $2) : () } @lines;
direct() unless $status =~ m{^HTTP/1\.[01] 200 };

sub out { my $d = shift; while (length $d) { my $n = syswrite(STDOUT, $d); defined $n or exit 1; substr($d, 0, $n, '') } }
if (defined(my $file = $h{'x-vcs-file'})) {
  # a finished entry, read here; one evicted before it was opened means running pack-objects after all
  open(my $f, '<', $file) or (-e $file ? exit 1 : direct());
  syswrite(STDERR, pack('H*', $h{'x-vcs-progress'} // ''));
  my $d;
  while (1) { my $n = sysread($f, $d, 262144); defined $n or exit 1; last if !$n; out($d) }
  exit 0;
}
# a production followed as it is written, chunked: only the last chunk says it is whole; the
# progress pack-objects showed so far comes first, the rest in a trailer
exit 1 unless lc($h{'transfer-encoding'} // '') eq 'chunked';
syswrite(STDERR, pack('H*', $h{'x-vcs-progress'} // ''));
while (1) {
  my $nl;
  while (($nl = index($buf, "\r\n")) < 0) { $fill->() or exit 1 }
  my $size = hex(substr($buf, 0, $nl));
  substr($buf, 0, $nl + 2, '');
  if ($size == 0) {
    my $t;
    while (($t = index($buf, "\r\n\r\n")) < 0 && substr($buf, 0, 2) ne "\r\n") { length($buf) < 65536 && $fill->() or exit 0 }
    syswrite(STDERR, pack('H*', $1)) if substr($buf, 0, $t < 0 ? 0 : $t) =~ /^x-vcs-progress-rest:\s*([0-9a-f]*)/mi;
    exit 0;
  }
  while (length($buf) < $size + 2) { $fill->() or exit 1 }
  out(substr($buf, 0, $size, ''));
  substr($buf, 0, 2, '');
}
