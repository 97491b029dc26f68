#!/bin/sh
# The native-runtime scenarios, run inside the VM by whoever calls it (root,
# or the user from a login session or a user service) with no `ces system
# setup`. For each scenario NAME it writes, under $1: NAME.rc (ces's exit
# status), NAME.out, NAME.err, and NAME.host for what it checked on the host
# side after the run. The test on the host asserts; this script only records.
set -u
OUT=$1
exec > "$OUT/scenarios.log" 2>&1
CES=/payload/ces
IMG=ghcr.io/ces-tre/busybox:1.0
cd "$HOME"

# sc NAME CMD...: runs CMD (with a time limit against hangs), records it.
sc() {
    name=$1
    shift
    echo "== $name at $(cut -d' ' -f1 /proc/uptime) s: $*"
    timeout -k 5 240 "$@" > "$OUT/$name.out" 2> "$OUT/$name.err" < /dev/null
    echo $? > "$OUT/$name.rc"
    echo "   exit $(cat "$OUT/$name.rc") at $(cut -d' ' -f1 /proc/uptime) s"
}

# bg_run NAME SECONDS [OPTION...]: starts `ces run OPTION... IMG` with a
# workload that says ready and sleeps SECONDS, in the background (its output
# in NAME.out and NAME.err), and waits until it is up; sets ces_pid (ces's)
# and pid (the workload's, as the host sees it).
bg_run() {
    name=$1
    secs=$2
    shift 2
    "$CES" run "$@" "$IMG" sh -c "echo ready; exec sleep $secs" > "$OUT/$name.out" 2> "$OUT/$name.err" < /dev/null &
    ces_pid=$!
    i=0
    pid=
    # Ready is said just before the exec of sleep: wait for both.
    until [ -n "$pid" ] || [ $i -ge 600 ] || ! kill -0 "$ces_pid" 2> /dev/null; do
        i=$((i + 1))
        sleep 0.2
        grep -q ready "$OUT/$name.out" 2> /dev/null && pid=$(pgrep -f "^sleep $secs\$" | head -1)
    done
}

# wait_ces: waits for ces_pid's end (killing it after 60 s: a ces that
# hangs is recorded as killed, 137, rather than stopping the scenarios).
wait_ces() {
    (
        sleep 60 &
        s=$!
        trap 'kill $s; exit 0' TERM
        wait $s
        kill -KILL "$ces_pid"
    ) 2> /dev/null &
    watchdog=$!
    wait "$ces_pid"
    rc=$?
    kill "$watchdog" 2> /dev/null
    return $rc
}

# Where this runs: the test checks it really is the context it claims.
{
    echo "uid=$(id -u)"
    echo "XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-}"
    echo "XDG_SESSION_ID=${XDG_SESSION_ID:-}"
    echo "HOME=$HOME"
    echo "cgroup=$(cat /proc/self/cgroup)"
    echo "cgroup.controllers=$(cat "/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/cgroup.controllers" 2>&1)"
} > "$OUT/context.txt" 2>&1

sc load "$CES" load /payload/busybox.tar

sc exit-code "$CES" run "$IMG" sh -c 'exit 7'

# The directory contract: /safe_data read-only, /safe_outputs kept (owned by
# the user on the host), /scratch usable and removed after the run; and the
# line of the container's / in its mountinfo (the command is
# ces_testkit::mountinfo::ROOT_MOUNT_LINE).
sc contract "$CES" run --json "$IMG" sh -c '
    cat /safe_data/data.csv
    if touch /safe_data/new 2> /dev/null; then echo SAFE_DATA_WRITABLE; else echo SAFE_DATA_READONLY; fi
    echo kept > /safe_outputs/result.txt && echo OUTPUTS_WRITTEN
    echo temporary > /scratch/tmp.txt && echo SCRATCH_WRITTEN
    echo "TMPDIR=$TMPDIR"
    grep -E "^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / " /proc/self/mountinfo | sed "s/^/root_mount=/"'
outputs=$(sed -n 's/.*"event":"end".*"outputs":"\([^"]*\)".*/\1/p' "$OUT/contract.out" | head -1)
{
    echo "outputs=$outputs"
    stat -c 'result.txt owner=%u:%g' "$outputs/result.txt"
    echo "result.txt=$(cat "$outputs/result.txt")"
    echo "safe_data entries=$(ls "$HOME/safe_data" | tr '\n' ' ')"
    echo "scratch left=$(ls -d "$HOME"/scratch_* 2> /dev/null | tr '\n' ' ')"
} > "$OUT/contract.host" 2>&1

# OOM with swap on: dd's 200 MiB buffer, filled from /dev/zero (every page
# touched), under a 0.1 GiB limit. The control shows the same workload
# completes under 1 GiB.
alloc='dd if=/dev/zero of=/dev/null bs=200M count=1 2> /dev/null && echo ALLOCATED'
sc oom-control "$CES" run -m 1 "$IMG" sh -c "$alloc"
sc oom "$CES" run -m 0.1 "$IMG" sh -c "$alloc"

# The limits as the container sees them (its own cgroup at /sys/fs/cgroup).
sc limits-inside "$CES" run -c 1 -m 0.5 "$IMG" sh -c '
    for f in cpu.max memory.max memory.swap.max pids.max; do
        printf "%s=%s\n" "$f" "$(cat /sys/fs/cgroup/$f 2>&1)"
    done
    echo "entries=$(ls /sys/fs/cgroup | tr "\n" " ")"
    grep " /sys/fs/cgroup " /proc/self/mountinfo | sed "s/^/mount=/"
    if echo max > /sys/fs/cgroup/memory.max 2> /dev/null; then echo CGROUP_WRITABLE; else echo CGROUP_WRITE_DENIED; fi'

# A running container seen from the host: its cgroup's limits, then SIGTERM
# to ces, which must pass it on and end cleanly.
bg_run sigterm 4242 -c 1 -m 0.5
{
    echo "container pid=$pid"
    cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
    echo "cgroup=$cg"
    for f in cpu.max memory.max memory.swap.max pids.max; do
        echo "$f=$(cat "/sys/fs/cgroup$cg/$f" 2>&1)"
    done
} > "$OUT/limits-host.host" 2>&1
kill -TERM "$ces_pid"
wait_ces
echo $? > "$OUT/sigterm.rc"
{
    echo "still running=$(pgrep -f '^sleep 4242$' | tr '\n' ' ')"
    echo "scratch left=$(ls -d "$HOME"/scratch_* 2> /dev/null | tr '\n' ' ')"
} > "$OUT/sigterm.host" 2>&1

sc ces-test "$CES" test "$IMG" sh -c 'echo hello > /safe_outputs/hello.txt'

# An image of 40 layers, kept as them (see many_layers in the test).
MANY=ghcr.io/ces-tre/many:1.0
"$CES" load /payload/many.tar > "$OUT/many-load.out" 2>&1
sc many-layers "$CES" run -q "$MANY" sh -c 'cat /f1 /f39'
{
    echo "kernel=$(uname -r)"
    echo "rootfs=$("$CES" inspect "$MANY" | sed -n 's/^Rootfs: *//p')"
} > "$OUT/many-layers.host" 2>&1

# As root, the start's cgroup warm-up: its helper moved within the cgroup
# ces started in (this script's), as the debug log says.
if [ "$(id -u)" = 0 ]; then
    sc warmup env RUST_LOG=ces_runtime=debug "$CES" run "$IMG" true
    echo "started in=$(sed -n 's/^0:://p' /proc/self/cgroup)" > "$OUT/warmup.host" 2>&1
fi

# As root: a process host root puts into a running container's cgroup is
# killed when the container ends (cgroup.kill), and the cgroup removed.
if [ "$(id -u)" = 0 ]; then
    bg_run intruder 4343
    cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
    sleep 4344 &
    intruder=$!
    {
        echo "container cgroup=$cg"
        if echo "$intruder" > "/sys/fs/cgroup$cg/cgroup.procs"; then echo "moved in=yes"; else echo "moved in=no"; fi
        echo "intruder cgroup=$(sed -n 's/^0:://p' "/proc/$intruder/cgroup")"
    } > "$OUT/intruder.host" 2>&1
    kill -TERM "${pid:-$ces_pid}"
    wait_ces
    echo $? > "$OUT/intruder.rc"
    {
        # Killed, it is a zombie of this shell's until waited for.
        state=$(awk '{print $3}' "/proc/$intruder/stat" 2> /dev/null)
        echo "intruder state=${state:-gone}"
        if [ -d "/sys/fs/cgroup$cg" ]; then echo "cgroup left=yes"; else echo "cgroup left=no"; fi
    } >> "$OUT/intruder.host" 2>&1
    kill -KILL "$intruder" 2> /dev/null
    wait "$intruder" 2> /dev/null
fi

# GPU 1 only (the run's device cgroup, as root, lets it be opened), the
# spec's variable, and its hook's mark.
sc gpu "$CES" run --gpu 1 "$IMG" sh -c '
    echo "devices=$(ls /dev | grep examplegpu | tr "\n" " ")"
    if exec 3<> /dev/examplegpu1; then echo GPU_OPENED; fi
    echo "env=$EXAMPLE_DRIVER"
    cat /dev/cdi-hook-mark'

# Rootless, a store where analyst's disk quota (1 MiB, set by run) is too
# small: for an incompressible layer's blob, and for a layer that inflates
# past it. Each fails with what ran out and leaves nothing behind. A pull
# of the first is refused before it downloads; one of an image that fits
# goes ahead.
if [ "$(id -u)" != 0 ]; then
    # (The machine's policy takes no --config: the store is moved the XDG way.)
    q=/srv/quota/analyst/$(basename "$OUT")
    for pair in blob:noise unpack:zeros; do
        sc "quota-${pair%:*}" env XDG_DATA_HOME="$q" "$CES" load "/payload/${pair#*:}.tar"
        # (Read as they are: ces images would clean tmp/ first.)
        {
            echo "index=$(tr -d ' \n' < "$q/ces/oci/index.json" 2>&1)"
            echo "tmp left=$(ls -A "$q/ces/tmp" 2>&1 | tr '\n' ' ')"
        } > "$OUT/quota-${pair%:*}.host" 2>&1
    done
    for pair in pull:noise pull-fits:small; do
        sc "quota-${pair%:*}" env XDG_DATA_HOME="$q" "$CES" pull "127.0.0.1:5055/quota/${pair#*:}:1"
        {
            echo "index=$(tr -d ' \n' < "$q/ces/oci/index.json" 2>&1)"
            echo "tmp left=$(ls -A "$q/ces/tmp" 2>&1 | tr '\n' ' ')"
        } > "$OUT/quota-${pair%:*}.host" 2>&1
    done
    # What the store and the quota hold, by ces and by quota(1).
    sc quota-disk env XDG_DATA_HOME="$q" "$CES" images --disk --json
    echo "quota=$(quota -w 2>&1 | grep "^ *$(findmnt -no SOURCE /srv/quota) ")" > "$OUT/quota-disk.host"
    rm -rf "$q"
    # The same where analyst's group has a quota (512 KiB), and not analyst.
    g=/srv/gquota/analyst/$(basename "$OUT")
    for pair in group-pull:noise group-pull-fits:small; do
        sc "quota-${pair%:*}" env XDG_DATA_HOME="$g" "$CES" pull "127.0.0.1:5055/quota/${pair#*:}:1"
    done
    sc quota-group-disk env XDG_DATA_HOME="$g" "$CES" images --disk --json
    echo "quota=$(quota -g -w analyst 2>&1 | grep "^ *$(findmnt -no SOURCE /srv/gquota) ")" > "$OUT/quota-group-disk.host"
    rm -rf "$g"
fi

echo "== done at $(cut -d' ' -f1 /proc/uptime) s"
