//! Real apps through `ces run`, in images built from Debian 12 packages
//! (`ces_testkit::debimage`, cached by content): PostgreSQL with a
//! published port and a bind-mounted data directory that outlives the run,
//! a Jupyter notebook server with token auth that headless Chromium on
//! the host loads through the published port, and an R Shiny app whose page
//! the host fetches through its port; an init that starts as root
//! and needs tmpfs `/run` and `PASSWORD`, run from option and env files
//! written as the reference service documents RStudio's. In the same runs the
//! container's network namespace holds only `lo`, and nothing it tries to
//! reach outside (1.1.1.1, a listener on the host's own address) answers.
//! As root and rootless (the test user); the init as root.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ces_testkit::debimage::{Built, DebImage};
use common::{Mode, World, free_port};

/// Prints what the workload can reach before the app starts: one `BLOCKED
/// host:port` or `OPEN host:port` per target of `$CES_PROBE`, then `IFACES`
/// and the network interfaces it has.
const NETPROBE: &str = r#"#!/bin/bash
for target in ${CES_PROBE:-}; do
    if timeout 5 bash -c "echo > /dev/tcp/${target%:*}/${target##*:}" 2>/dev/null; then
        echo "OPEN $target"
    else
        echo "BLOCKED $target"
    fi
done
echo "IFACES $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
"#;

/// Installs `NETPROBE` (from `$NETPROBE`) into the root `$1`.
const INSTALL_NETPROBE: &str = "install -m 0755 /dev/stdin \"$1/usr/local/bin/ces-netprobe\" <<'EOF'\n";

/// PostgreSQL 15 as the image's `postgres` user: a new cluster in the
/// (bind-mounted) data directory if it has none, with the superuser's
/// password from `POSTGRES_PASSWORD` (scram over TCP), listening on the
/// container's loopback.
const POSTGRES_ENTRY: &str = r#"#!/bin/bash
set -eu
ces-netprobe
PGDATA=/var/lib/postgresql/data
BIN=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in the env file}" > "$pw"
    "$BIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pw" --auth-host=scram-sha-256 --auth-local=trust \
        --no-locale -E UTF8 >&2
    rm -f "$pw"
fi
echo STARTING
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp
"#;

/// Jupyter Notebook 6 on the container's loopback, token from `JUPYTER_TOKEN`
/// (read by the notebook itself: never on a command line).
const JUPYTER_ENTRY: &str = r#"#!/bin/bash
set -eu
ces-netprobe
: "${JUPYTER_TOKEN:?set JUPYTER_TOKEN in the env file}"
echo STARTING
exec python3 -m notebook --no-browser --ip=127.0.0.1 --port=8888 --notebook-dir=/tmp
"#;

/// A Shiny app (R) on the container's loopback: a page titled `ces shiny`
/// with a number the server renders.
const SHINY_ENTRY: &str = r#"#!/bin/bash
set -eu
ces-netprobe
echo STARTING
exec R --no-save -e "shiny::runApp('/app', host='127.0.0.1', port=3838)"
"#;

/// The Shiny app's `/app/app.R`.
const SHINY_APP: &str = r#"library(shiny)
ui <- fluidPage(titlePanel("ces shiny"), textOutput("n"))
server <- function(input, output) {
    output$n <- renderText(6 * 7)
}
shinyApp(ui, server)
"#;

/// Like RStudio Server's init: starts as root, needs a tmpfs on `/run` and
/// on `/var/lib/rstudio-server` and `PASSWORD` from the env file, then
/// serves (HTTP basic auth, user `rstudio`) on the container's 8787.
const INIT_ENTRY: &str = r#"#!/bin/bash
set -eu
ces-netprobe
[ "$(id -u)" = 0 ] || { echo "ces-init-app: must start as root" >&2; exit 3; }
for dir in /run /var/lib/rstudio-server; do
    grep -q " $dir tmpfs " /proc/mounts || { echo "ces-init-app: needs a tmpfs on $dir" >&2; exit 3; }
done
: "${PASSWORD:?set PASSWORD in the env file}"
echo $$ > /run/ces-init-app.pid
echo STARTING
exec python3 /usr/local/lib/ces-init-app.py
"#;

/// The init app's server: 401 without the password, 200 with it; ends
/// cleanly (0) on SIGTERM, as RStudio Server does.
const INIT_SERVER: &str = r#"import base64, http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
expected = "Basic " + base64.b64encode(("rstudio:" + os.environ["PASSWORD"]).encode()).decode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == expected
        body = b"ces-init-app: signed in\n" if ok else b"sign in\n"
        self.send_response(200 if ok else 401)
        if not ok:
            self.send_header("WWW-Authenticate", 'Basic realm="app"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 8787), Handler).serve_forever()
"#;

/// A recipe installing the net probe and `entry` as `/usr/local/bin/ces-entry`.
fn recipe(entry: &str, extra: &str) -> String {
    format!(
        "set -eu\n{INSTALL_NETPROBE}{NETPROBE}EOF\ninstall -m 0755 /dev/stdin \"$1/usr/local/bin/ces-entry\" <<'EOF'\n{entry}EOF\n{extra}"
    )
}

fn postgres_image() -> DebImage {
    // The package's own cluster is of no use: the entry makes one in the data directory.
    DebImage::new("postgres", &["postgresql-15"])
        .recipe(&recipe(POSTGRES_ENTRY, "rm -rf \"$1/var/lib/postgresql/15\" \"$1/etc/postgresql/15\"\n"))
        .user("postgres")
        .cmd(&["/usr/local/bin/ces-entry"])
}

fn jupyter_image() -> DebImage {
    DebImage::new("jupyter", &["python3-notebook"])
        .recipe(&recipe(JUPYTER_ENTRY, "chroot \"$1\" useradd --uid 1000 --no-create-home analyst\n"))
        .user("analyst")
        // The image's files are not the container user's: HOME (Jupyter's
        // runtime and data directories) in /tmp.
        .env(&["HOME=/tmp"])
        .workdir("/tmp")
        .cmd(&["/usr/local/bin/ces-entry"])
}

fn shiny_image() -> DebImage {
    let app = format!(
        "mkdir -p \"$1/app\"\ninstall -m 0644 /dev/stdin \"$1/app/app.R\" <<'EOF'\n{SHINY_APP}EOF\n\
         chroot \"$1\" useradd --uid 1000 --no-create-home analyst\n"
    );
    DebImage::new("shiny", &["r-cran-shiny"])
        .recipe(&recipe(SHINY_ENTRY, &app))
        .user("analyst")
        .env(&["HOME=/tmp"])
        .workdir("/tmp")
        .cmd(&["/usr/local/bin/ces-entry"])
}

fn init_image() -> DebImage {
    let server = format!("install -m 0644 /dev/stdin \"$1/usr/local/lib/ces-init-app.py\" <<'EOF'\n{INIT_SERVER}EOF\n");
    DebImage::new("init-app", &["python3"]).recipe(&recipe(INIT_ENTRY, &server)).cmd(&["/usr/local/bin/ces-entry"])
}

/// Builds (or takes from the cache) `image`, saying how long it took.
fn built(image: &DebImage) -> Built {
    let started = Instant::now();
    let built = image.get().unwrap_or_else(|e| panic!("building the {} image: {e}", image.name));
    match built.built_in {
        Some(t) => eprintln!("apps: {} image built in {t:.1?} ({} MiB)", image.name, built.size >> 20),
        None => eprintln!("apps: {} image from the cache in {:.1?}", image.name, started.elapsed()),
    }
    built
}

/// A world in `mode` with `image` loaded into its store, and binds allowed
/// under its HOME; returns the world and the loaded image's reference.
fn world(test: &str, mode: Mode, image: &DebImage) -> (World, String) {
    let built = built(image);
    let w = World::new(&mode.repo("apps", test), mode);
    w.sb.configure(&format!("[run]\nbind_roots = [{:?}]\n", w.home.display().to_string()));
    let archive = built.archive.to_str().unwrap();
    let started = Instant::now();
    let reference = w.ces(&["load", "--quiet", archive]).ok().trim().to_owned();
    eprintln!("apps: {} loaded in {:.1?}", image.name, started.elapsed());
    (w, reference)
}

/// The host listener and the targets the workload's probe tries.
struct Bait {
    bait: common::Bait,
    targets: Vec<String>,
}

impl Bait {
    fn new() -> Bait {
        let bait = common::Bait::new();
        let targets = bait.targets(("1.1.1.1", 443)).into_iter().map(|(h, p)| format!("{h}:{p}")).collect();
        Bait { bait, targets }
    }

    /// Asserts the probe's lines show no connection out and only `lo`, and
    /// that the listener got nothing.
    #[track_caller]
    fn assert_blocked(&self, lines: &[String]) {
        for target in &self.targets {
            assert!(lines.contains(&format!("BLOCKED {target}")), "the workload connected out: {lines:?}");
        }
        assert!(lines.contains(&"IFACES lo".to_owned()), "the container has another interface: {lines:?}");
        assert_eq!(self.bait.hit_count(), 0, "the host's listener was reached");
    }
}

/// Starts `ces run` (stdout piped, stderr to a file) and reads its stdout
/// up to `STARTING`: the probe's lines. The rest of stdout is drained in
/// the background so the app never blocks on it.
fn start(w: &World, args: &[&str], log: &Path) -> (Child, Vec<String>) {
    let mut child = w.command(args).stdout(Stdio::piped()).stderr(std::fs::File::create(log).unwrap()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!("the run ended before starting its app: {lines:?}\n{}", std::fs::read_to_string(log).unwrap());
        }
        let line = line.trim_end().to_owned();
        if line == "STARTING" {
            break;
        }
        lines.push(line);
    }
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    (child, lines)
}

/// `ces stop NAME`, then the run's end: it must end by the app's own clean
/// shutdown (exit 0).
fn stop(w: &World, name: &str, mut child: Child, log: &Path) {
    w.ces(&["stop", name]).ok();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(log).unwrap());
}

/// Polls `attempt` until it returns `Some`, for up to five minutes (an app's
/// first start on a loaded machine can be slow; no timing is asserted).
fn poll<T>(what: &str, child: &mut Child, log: &Path, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {what}:\n{}", std::fs::read_to_string(log).unwrap());
        }
        assert!(Instant::now() < deadline, "{what}: never happened\n{}", std::fs::read_to_string(log).unwrap());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The host's `psql` on `127.0.0.1:port` as `postgres` with `password`.
fn psql(port: u16, password: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The reference service's PostgreSQL sample, adapted: `-p PORT:5432 -v
/// ./pgdata:/var/lib/postgresql/data` and the password in an env file. The
/// host's `psql` creates a table and a row through the port; `ces stop`;
/// a second run on the same data directory has the row. Both runs could
/// not connect out.
fn postgres(mode: Mode) {
    let (w, image) = world("postgres", mode, &postgres_image());
    let data = w.home.join("pgdata");
    std::fs::create_dir(&data).unwrap();
    if mode != Mode::Root {
        w.user.chown(&data);
    }
    let password = "ces-apps-test-password";
    std::fs::write(w.home.join("pg.env"), format!("POSTGRES_PASSWORD={password}\n")).unwrap();
    let bait = Bait::new();
    let probe = format!("CES_PROBE={}", bait.targets.join(" "));
    let name = format!("pg-{mode:?}").to_lowercase();

    for round in 0..2 {
        let port = free_port();
        let publish = format!("{port}:5432");
        let log = w.sb.dir.path().join(format!("postgres-{round}.log"));
        let args = [
            "run",
            "-q",
            "-n",
            &name,
            "-p",
            &publish,
            "-v",
            "./pgdata:/var/lib/postgresql/data",
            "--env-file",
            "pg.env",
            "-e",
            &probe,
            &image,
        ];
        let started = Instant::now();
        let (mut child, lines) = start(&w, &args, &log);
        bait.assert_blocked(&lines);
        poll("psql connected through the port", &mut child, &log, || {
            psql(port, password, "select 1").status.success().then_some(())
        });
        eprintln!("apps: postgres ({mode:?}, run {round}) answered after {:.1?}", started.elapsed());
        // The app's own authentication holds through the port.
        let wrong = psql(port, "not-the-password", "select 1");
        assert!(!wrong.status.success(), "a wrong password was accepted");
        if round == 0 {
            let out = psql(
                port,
                password,
                "create table results (id int, note text); insert into results values (1, 'kept');",
            );
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        } else {
            let out = psql(port, password, "select note from results where id = 1");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kept", "the row of the first run");
        }
        stop(&w, &name, child, &log);
    }
    // The cluster lives in the user's directory, as the user.
    let version = data.join("PG_VERSION");
    assert_eq!(std::fs::read_to_string(&version).unwrap().trim(), "15");
    assert_eq!(std::fs::metadata(&version).unwrap().uid(), w.uid());
}

#[test]
fn postgres_keeps_its_data_in_a_bind_and_serves_the_host_as_root() {
    postgres(Mode::Root);
}

#[test]
fn postgres_keeps_its_data_in_a_bind_and_serves_the_host_rootless() {
    postgres(Mode::Rootless);
}

/// One HTTP/1.0 GET of `path` on `127.0.0.1:port`: the status code and the
/// whole response, or `None` when nothing answers yet.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, "")
}

/// [`http_get`] with more header lines (each ending in CRLF).
fn http_get_with(port: u16, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
}

/// `-p PORT:8888`, the token in an env file: without the token the API is
/// closed; with it the page (fetched with a plain HTTP client) is
/// Jupyter's, and headless Chromium on the host renders it through the
/// port into a PNG screenshot. The container could not connect out.
fn jupyter(mode: Mode) {
    let (w, image) = world("jupyter", mode, &jupyter_image());
    let token = "ces-apps-test-token-0123456789";
    std::fs::write(w.home.join("jupyter.env"), format!("JUPYTER_TOKEN={token}\n")).unwrap();
    let bait = Bait::new();
    let probe = format!("CES_PROBE={}", bait.targets.join(" "));
    let name = format!("jupyter-{mode:?}").to_lowercase();
    let port = free_port();
    let publish = format!("{port}:8888");
    let log = w.sb.dir.path().join("jupyter.log");
    let args = ["run", "-q", "-n", &name, "-p", &publish, "--env-file", "jupyter.env", "-e", &probe, &image];
    let started = Instant::now();
    let (mut child, lines) = start(&w, &args, &log);
    bait.assert_blocked(&lines);

    let with_token = format!("/tree?token={token}");
    let (code, page) = poll("Jupyter answered through the port", &mut child, &log, || http_get(port, &with_token));
    eprintln!("apps: jupyter ({mode:?}) answered after {:.1?}", started.elapsed());
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Jupyter"), "not Jupyter's page: {page}");
    let (code, _) = http_get(port, "/api/contents").unwrap();
    assert_eq!(code, 403, "the API answered without the token");
    let (code, _) = http_get(port, &format!("/api/contents?token={token}")).unwrap();
    assert_eq!(code, 200, "the API refused the token");

    let shot = w.sb.dir.path().join("jupyter.png");
    let png = screenshot(&format!("http://127.0.0.1:{port}{with_token}"), &shot);
    // CES_TEST_APPS_RESULTS=DIR keeps the screenshot to look at.
    if let Some(keep) = std::env::var_os("CES_TEST_APPS_RESULTS") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&shot, Path::new(&keep).join(format!("jupyter-{mode:?}.png"))).unwrap();
    }
    // An empty page of the same size compresses to a few KiB; Jupyter's UI
    // (logo, tabs, file list) to several times that.
    let blank = screenshot("about:blank", &w.sb.dir.path().join("blank.png"));
    assert!(png.len() > 3 * blank.len(), "the screenshot is nearly empty ({} bytes, blank {})", png.len(), blank.len());
    eprintln!("apps: jupyter screenshot {} bytes (blank page {})", png.len(), blank.len());
    stop(&w, &name, child, &log);
}

/// Headless Chromium on the host renders `url` (1280x800) into `path`: the PNG's bytes.
fn screenshot(url: &str, path: &Path) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let chromium = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,800"])
        .arg("--virtual-time-budget=10000")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("chromium: {e} (install it: scripts/setup --tests)"));
    assert!(chromium.status.success(), "chromium: {}", String::from_utf8_lossy(&chromium.stderr));
    let png = std::fs::read(path).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot of {url} is not a PNG");
    png
}

#[test]
fn jupyter_serves_chromium_on_the_host_with_its_token_as_root() {
    jupyter(Mode::Root);
}

#[test]
fn jupyter_serves_chromium_on_the_host_with_its_token_rootless() {
    jupyter(Mode::Rootless);
}

/// The Shiny recipe of docs/interactive.md: `-p PORT:3838`; the page GET
/// fetches through the port is the app's (its title), and the container
/// could not connect out.
fn shiny(mode: Mode) {
    let (w, image) = world("shiny", mode, &shiny_image());
    let bait = Bait::new();
    let probe = format!("CES_PROBE={}", bait.targets.join(" "));
    let name = format!("shiny-{mode:?}").to_lowercase();
    let port = free_port();
    let publish = format!("{port}:3838");
    let log = w.sb.dir.path().join("shiny.log");
    let args = ["run", "-q", "-n", &name, "-p", &publish, "-e", &probe, &image];
    let started = Instant::now();
    let (mut child, lines) = start(&w, &args, &log);
    bait.assert_blocked(&lines);
    // httpuv listens before Shiny has mounted the app, and answers 404 in
    // between (seen once in a full-suite run on a busy machine): the app's
    // page is what is waited for.
    let (code, page) = poll("Shiny answered through the port", &mut child, &log, || {
        http_get(port, "/").filter(|(code, _)| *code != 404)
    });
    eprintln!("apps: shiny ({mode:?}) answered after {:.1?}", started.elapsed());
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<title>ces shiny</title>"), "not the app's page: {page}");
    w.ces(&["stop", &name]).ok();
    // R has no SIGTERM handler: `ces stop`'s SIGTERM ends it, and the run
    // says so (128+15), as docs/run.md documents.
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{}", std::fs::read_to_string(&log).unwrap());
}

#[test]
fn shiny_serves_its_page_through_the_port_as_root() {
    shiny(Mode::Root);
}

#[test]
fn shiny_serves_its_page_through_the_port_rootless() {
    shiny(Mode::Rootless);
}

/// The reference service's RStudio recipe, with an app whose init (like
/// RStudio Server's) starts as root and needs tmpfs `/run` and
/// `/var/lib/rstudio-server` and `PASSWORD` from the env file: `ces-run
/// --opt-file app.opts --env-file app.env IMAGE`, the files written as the
/// reference service documents them, less `-it` (this test has no
/// terminal: tests/interactive_tty.rs covers `-it`). Without the option
/// file's tmpfs mounts the init refuses to start; with them the host reaches
/// it through the port, the password is required, and the container cannot
/// connect out.
#[test]
fn an_init_as_root_runs_from_the_reference_option_and_env_files() {
    let (w, image) = world("init", Mode::Root, &init_image());
    let bait = Bait::new();
    let port = free_port();
    let opts = format!(
        "-p {port}:8787\n--mount type=tmpfs,destination=/var/lib/rstudio-server\n--mount type=tmpfs,destination=/run\n"
    );
    std::fs::write(w.home.join("app.opts"), opts).unwrap();
    std::fs::write(w.home.join("app.env"), "PASSWORD=ces-apps-test-secret\n").unwrap();
    let probe = format!("CES_PROBE={}", bait.targets.join(" "));
    let ces_run = |args: &[&str]| {
        let mut cmd = w.sb.command(env!("CARGO_BIN_EXE_ces-run"), args);
        cmd.env("HOME", &w.home).current_dir(&w.home);
        cmd
    };

    // Without the tmpfs mounts, the init says what it needs and exits.
    let out = w.sb.run(ces_run(&["-q", "--env-file", "app.env", &image]));
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("needs a tmpfs on /run"), "{}", out.stderr);

    let log = w.sb.dir.path().join("init.log");
    let args = ["-q", "-n", "init-app", "--opt-file", "app.opts", "--env-file", "app.env", "-e", &probe, &image];
    let mut child = ces_run(&args).stdout(Stdio::piped()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "{lines:?}\n{}", std::fs::read_to_string(&log).unwrap());
        if line.trim_end() == "STARTING" {
            break;
        }
        lines.push(line.trim_end().to_owned());
    }
    bait.assert_blocked(&lines);
    let (code, _) = poll("the app answered through the port", &mut child, &log, || http_get(port, "/"));
    assert_eq!(code, 401, "the app answered without its password");
    let auth = format!("Authorization: Basic {}\r\n", base64_of("rstudio:ces-apps-test-secret"));
    let (code, page) = http_get_with(port, "/", &auth).unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("ces-init-app: signed in"), "{page}");
    stop(&w, "init-app", child, &log);
}

/// Standard base64 of `text` (the test needs it once: no crate for it).
fn base64_of(text: &str) -> String {
    let out = Command::new("base64").arg("-w0").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    out.stdin.as_ref().unwrap().write_all(text.as_bytes()).unwrap();
    String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
}
