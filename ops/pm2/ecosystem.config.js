// pm2 ecosystem file for wasync (tested with pm2 7.0.4 by tests/test_ops_pm2.py).
//
//   pm2 start ops/pm2/ecosystem.config.js                  # both instances below
//   pm2 start ops/pm2/ecosystem.config.js --only wasync-a  # just one
//   pm2 stop wasync-a   # SIGINT: it drains its spool, releases its leases, exits 0
//   pm2 stop wasync     # the namespace: every instance of this file
//   pm2 startup && pm2 save                                 # start them again at boot
//
// Paths and ports come from the environment of the shell running `pm2 start`, with the
// defaults of a checkout in /opt/wasync whose .venv `make run` has created:
//
//   WASYNC_HOME      the checkout holding .venv            (/opt/wasync)
//   WASYNC_DATA_DIR  embedded store, spools, sessions      ($WASYNC_HOME/data)
//   WASYNC_LOG_DIR   one log file per instance             ($WASYNC_HOME/logs)
//   WASYNC_PORT      HTTP port of the first instance; the second one takes the next (8080)
//   WASYNC_INSTANCE_PREFIX  start of each INSTANCE_ID      (this host's name)
//
// pm2 also hands every app the environment of the shell running `pm2 start` (an app's
// `env` below wins over it), so any other setting (`wasync config` lists them all:
// ADMIN_TOKEN, WASYNC_STORE, SESSIONS_DSN, ...) can be exported there or added to `env`.
// After changing this file, `pm2 restart ops/pm2/ecosystem.config.js` (the file: a
// restart by app name keeps the environment the app was started with).
"use strict";

const os = require("os");
const path = require("path");

const HOME = process.env.WASYNC_HOME || "/opt/wasync";
const DATA_DIR = process.env.WASYNC_DATA_DIR || path.join(HOME, "data");
const LOG_DIR = process.env.WASYNC_LOG_DIR || path.join(HOME, "logs");
const BASE_PORT = Number(process.env.WASYNC_PORT || 8080);
const PREFIX = process.env.WASYNC_INSTANCE_PREFIX || os.hostname();

// One pm2 app is one `wasync run` process. Several processes on one host are several
// apps, each with its own INSTANCE_ID (its spool file and lock: data/spool/{id}.db) and
// PORT, sharing WASYNC_DATA_DIR: they share the embedded store and the session files and
// split the accounts between them through leases (README "Running several instances").
// pm2's own `instances: N` / cluster mode cannot do that: it would start N copies with
// one INSTANCE_ID and one PORT, and all but one would be refused their spool.
function wasync(name, port) {
  const log = path.join(LOG_DIR, `${name}.log`);
  return {
    name,
    namespace: "wasync",
    // The venv's console script, run as it is: its #! line names the venv's python.
    // interpreter "none" is required: pm2 runs a file without a known extension with
    // node unless told otherwise. (Equivalent: script .venv/bin/python with args
    // "-m wasync.runtime.cli run"; the console script shows as `wasync run` in ps.)
    script: path.join(HOME, ".venv", "bin", "wasync"),
    args: "run",
    interpreter: "none",
    cwd: HOME,
    exec_mode: "fork",
    instances: 1,
    env: {
      PYTHONUNBUFFERED: "1", // stdout is a pipe to pm2: pass every line on at once
      // neonize's Go library reads it only from the environment the process starts with;
      // set here, `wasync run` need not re-execute itself to add it.
      NEONIZE_BOT_TAG: "off",
      WASYNC_DATA_DIR: DATA_DIR,
      PORT: String(port),
      // Stable across restarts: a restarted instance finds its own spool and replays it
      // at once (a new id would leave it for another instance to adopt). Unique per
      // process on every host that shares the store.
      INSTANCE_ID: `${PREFIX}-${name.replace(/^wasync-/, "")}`,
    },

    // Stopping. pm2 sends SIGINT (every app of a pm2 daemon gets the same signal: pm2 7
    // has no per-app kill_signal; PM2_KILL_SIGNAL=SIGTERM in the environment that starts
    // the pm2 daemon changes it for all of them). wasync treats SIGINT exactly like
    // SIGTERM: stop the sessions, write every spooled event to the store, release the
    // leases, log "[supervisor] shutting down: spool empty (0 events left ...)", exit 0.
    // That takes about a second, but may wait up to 30 s for sessions to stop and 30 s
    // more for the store (an outage): pm2's default of 1.6 s before SIGKILL would cut
    // it short. Nothing is lost by a SIGKILL (the spool is replayed at the next start),
    // but the leases are then kept until they lapse, so other instances wait. Under
    // `pm2 startup`'s systemd unit keep the unit's TimeoutStopSec above this.
    kill_timeout: 90000,
    // Signal and wait for the wasync process only. wasync starts no helper processes;
    // its only children are two exited `sh` left unreaped by neonize's import (it reads
    // `uname -a` with os.popen). With pm2's default tree kill, pm2 also waits for those
    // to vanish, which takes until the host's init reaps them: a second or so on a
    // usual host, but where nothing reaps orphans (e.g. pm2-runtime as a container's
    // PID 1 without --init) twice kill_timeout, then "could not be stopped" (errored).
    treekill: false,

    // Restarting after a crash: wait 1 s, then 1.5 times longer each time up to pm2's
    // ceiling of 15 s (reset after 30 s up), so a crash loop never hammers WhatsApp with
    // reconnects. A start that dies within min_uptime is unstable; max_restarts unstable
    // starts (counted in the first min_uptime x max_restarts after `pm2 start` or
    // `restart`) leave the app "errored" for an operator. Later crashes are retried
    // every 15 s at most.
    autorestart: true,
    exp_backoff_restart_delay: 1000,
    min_uptime: 10000,
    max_restarts: 10,
    // Exit 2 is a bad setting or a spool another process holds (same INSTANCE_ID and
    // WASYNC_DATA_DIR): the message is in the log and a restart cannot fix it. (pm2
    // 7.0.4 then lists the app as "waiting restart", but does not restart it.)
    stop_exit_codes: [2],

    // Logs. wasync logs to stderr, each line with its own timestamp (LOG_FORMAT=json
    // for one JSON object per line); stdout and stderr go to one file per instance, so
    // `tail -f` and `pm2 logs NAME` show one stream. No pm2 time prefix: it
    // would stamp every line twice. Rotate with pm2-logrotate or logrotate's
    // copytruncate (pm2 keeps the file open).
    out_file: log,
    error_file: log,
    merge_logs: true, // no "-{pm_id}" suffix in the file name
    time: false,
  };
}

module.exports = {
  apps: [
    wasync("wasync-a", BASE_PORT),
    // The second process on this host. Delete it for one process; add more the same way.
    wasync("wasync-b", BASE_PORT + 1),
  ],
};
