//! A live one-node Slurm cluster for the scale-out tests: Debian 12's
//! `munged`, `slurmctld` and `slurmd` (slurm-wlm 22.05), no systemd, each in
//! the foreground under a wrapper shell, with a munge key, a config, state
//! and spool directories of their own in a temp directory, and free ports.
//! Started once per test binary (root: `slurmd` runs jobs as their users),
//! stopped and removed when the test process exits: the wrapper's stdin is a
//! pipe from the test process, and its end is the signal.
//!
//! The node is this host (its short hostname, at 127.0.0.1): jobs run here,
//! as the user who submitted them, with the process tracking of
//! `proctrack/linuxproc` (no cgroups of Slurm's own; ces makes the run's).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    node: String,
    /// The wrapper: dropping its stdin (at process exit) stops everything.
    _wrapper: Mutex<Child>,
}

/// The wrapper: the daemons in the foreground, their pids on stdout, then
/// (when stdin ends) all stopped and the directory removed.
const WRAPPER: &str = r#"D=$1
munged -F --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket" --pid-file="$D/munge/munged.pid" \
    --log-file="$D/log/munged.log" --seed-file="$D/munge/seed" --force </dev/null >>"$D/log/munged.out" 2>&1 & m=$!
i=0
until [ -S "$D/munge/munge.socket" ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i + 1)); done
slurmctld -D -f "$D/slurm.conf" </dev/null >>"$D/log/slurmctld.out" 2>&1 & c=$!
slurmd -D -f "$D/slurm.conf" </dev/null >>"$D/log/slurmd.out" 2>&1 & n=$!
echo "$m $c $n"
read line
kill $n $c $m 2>/dev/null
wait
case "$D" in /*/ces-test-slurm-*) rm -rf -- "$D" ;; esac"#;

impl Cluster {
    /// The cluster of this test binary, started on first use (as root).
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(Cluster::start)
    }

    fn start() -> Cluster {
        for program in ["munged", "slurmctld", "slurmd", "sbatch"] {
            assert!(
                ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(program).exists()),
                "{program} is missing: run scripts/setup --tests (Debian's slurmctld, slurmd, slurm-client and munge)"
            );
        }
        // Readable by the users who submit jobs (the config, munge's socket).
        // Not under /tmp: the fake GPUs' nodes are in it, and ces takes a
        // device node only from directories root alone can change.
        let dir = tempfile::Builder::new().prefix("ces-test-slurm-").tempdir_in("/var/lib").unwrap().keep();
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
        };
        mode(&dir, 0o755);
        for sub in ["munge", "log", "state", "spool", "gpus"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
            mode(&dir.join(sub), 0o755);
        }
        // Two fake GPUs (the numbers of /dev/null and /dev/zero), as Slurm's
        // gres.conf names them: a job's --gres=gpu:N gets N of them, and
        // their indexes in SLURM_JOB_GPUS.
        for (i, minor) in GPU_MINORS.iter().enumerate() {
            let node = dir.join("gpus").join(format!("gpu{i}"));
            let made = Command::new("mknod").args(["-m", "0666"]).arg(&node).args(["c", "1", minor]).status();
            assert!(made.is_ok_and(|s| s.success()), "mknod {}", node.display());
        }
        // The key root's alone; the socket beside it reachable by all.
        mode(&dir.join("munge"), 0o711);
        let mut key = [0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
        std::fs::write(dir.join("munge/munge.key"), key).unwrap();
        mode(&dir.join("munge/munge.key"), 0o400);
        let node = short_hostname();
        std::fs::write(dir.join("slurm.conf"), config(&dir, &node)).unwrap();
        mode(&dir.join("slurm.conf"), 0o644);
        let last = GPU_MINORS.len() - 1;
        let gres = format!("NodeName={node} Name=gpu File={}/gpus/gpu[0-{last}]\n", dir.display());
        std::fs::write(dir.join("gres.conf"), gres).unwrap();
        mode(&dir.join("gres.conf"), 0o644);

        let mut wrapper = Command::new("sh")
            .args(["-c", WRAPPER, "sh"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.split_whitespace().count(), 3, "the Slurm wrapper printed {line:?}, not three pids");
        let cluster = Cluster { dir, node, _wrapper: Mutex::new(wrapper) };
        cluster.wait_idle();
        cluster
    }

    /// Waits until the node is idle (slurmd registered with slurmctld).
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self.command("sinfo").args(["-h", "-o", "%t"]).output().unwrap();
            last = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if last == "idle" {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the Slurm node is {last:?}, not idle, after 60 s:\n{}", self.logs());
    }

    /// The daemons' logs, for failures.
    pub fn logs(&self) -> String {
        ["munged.log", "munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join("log").join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- {name} ---\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The cluster's config file (`SLURM_CONF` for its commands).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// The node's fake GPUs (character devices, root's, in a directory
    /// only root can change), by index.
    pub fn gpus(&self) -> Vec<PathBuf> {
        (0..GPU_MINORS.len()).map(|i| self.dir.join("gpus").join(format!("gpu{i}"))).collect()
    }

    /// The node's name (this host's short hostname).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A Slurm command (`sbatch`, `squeue`, `scancel`...) for this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.conf()).stdin(Stdio::null());
        command
    }
}

/// The minors (of major 1) of the node's fake GPUs.
const GPU_MINORS: [&str; 2] = ["3", "5"];

/// The config: one node (this host, all its CPUs and 90% of its memory) in
/// one partition, munge through the cluster's own socket, no accounting.
fn config(dir: &Path, node: &str) -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let memory_mib = total_kib / 1024 * 9 / 10;
    let (ctld_port, slurmd_port) = (free_port(), free_port());
    let d = dir.display();
    let gpus = GPU_MINORS.len();
    format!(
        "ClusterName=cestest\n\
         SlurmctldHost={node}(127.0.0.1)\n\
         SlurmctldPort={ctld_port}\n\
         SlurmdPort={slurmd_port}\n\
         SlurmUser=root\n\
         SlurmdUser=root\n\
         AuthType=auth/munge\n\
         AuthInfo=socket={d}/munge/munge.socket\n\
         CredType=cred/munge\n\
         StateSaveLocation={d}/state\n\
         SlurmdSpoolDir={d}/spool\n\
         SlurmctldPidFile={d}/slurmctld.pid\n\
         SlurmdPidFile={d}/slurmd.pid\n\
         SlurmctldLogFile={d}/log/slurmctld.log\n\
         SlurmdLogFile={d}/log/slurmd.log\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         SchedulerType=sched/builtin\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core_Memory\n\
         ReturnToService=2\n\
         MpiDefault=none\n\
         GresTypes=gpu\n\
         NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} Gres=gpu:{gpus} State=UNKNOWN\n\
         PartitionName=ces Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    )
}

fn short_hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().expect("hostname");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!name.is_empty(), "hostname -s printed nothing");
    name
}

/// A free TCP port on 127.0.0.1 (free when asked).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A cluster of a test binary lives until the process exits (its
        // wrapper's stdin closing stops it); one dropped earlier stops now.
        if let Ok(mut wrapper) = self._wrapper.lock() {
            if let Some(mut stdin) = wrapper.stdin.take() {
                let _ = stdin.write_all(b"stop\n");
            }
            let _ = wrapper.wait();
        }
    }
}
