//! The vCPU thread and how it is stopped.
//!
//! One thread owns the `VcpuFd` and calls `KVM_RUN` until the guest halts. A pause sets a flag,
//! sets `immediate_exit` in the vCPU's `kvm_run` page and sends the thread a signal: whether the
//! thread is inside `KVM_RUN` (the signal makes it return `EINTR`, even from a wait on a
//! userfaultfd fault) or about to enter it (`immediate_exit` makes it return at once), it comes
//! out. Before parking it enters `KVM_RUN` once more with `immediate_exit` still set, which
//! completes a port write KVM has not finished yet (otherwise the restored guest would repeat
//! it), and snapshots the registers for the state blob.

use crate::guest::PORT_PASS;
use crate::state::{CpuState, DeviceError, ProgressDevice};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Errors of the vCPU thread.
#[derive(Debug, Error, Clone)]
pub enum VcpuError {
    /// `KVM_RUN` failed.
    #[error("KVM_RUN failed: errno {errno}")]
    Run {
        /// The errno.
        errno: i32,
    },
    /// Reading the registers for the snapshot failed.
    #[error("reading the vCPU's {what} failed: errno {errno}")]
    Snapshot {
        /// Which registers.
        what: &'static str,
        /// The errno.
        errno: i32,
    },
    /// The guest left `KVM_RUN` for a reason this VMM does not handle.
    #[error("unexpected vCPU exit: {exit}")]
    UnexpectedExit {
        /// The exit, as KVM reported it.
        exit: String,
    },
    /// The guest wrote something the progress device refuses.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The thread did not stop within the time a pause may take.
    #[error("the vCPU did not stop within {waited_ms} ms")]
    PauseTimeout {
        /// How long the pause waited.
        waited_ms: u64,
    },
    /// The vCPU thread could not be started.
    #[error("starting the vCPU thread failed: errno {errno}")]
    Spawn {
        /// The errno.
        errno: i32,
    },
}

/// What the VMM wants the thread to do, what the thread reports back, and the device the
/// guest's port writes reach.
#[derive(Debug, Default)]
struct Ctl {
    pause: bool,
    stop: bool,
    parked: bool,
    /// Set once the guest halted or the thread failed.
    ended: Option<Result<(), VcpuError>>,
    /// Registers at the last park or the halt.
    snapshot: Option<CpuState>,
    device: ProgressDevice,
}

struct Shared {
    ctl: Mutex<Ctl>,
    changed: Condvar,
    /// Address of the `immediate_exit` byte in the vCPU's `kvm_run` mapping.
    immediate_exit: usize,
    /// The thread's pthread id, once it runs (0 before).
    thread: AtomicU64,
    /// The least time a pass takes: the vCPU is held at a pass's report until then.
    min_pass: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        // A panicking vCPU thread poisons nothing we cannot still read: take the data.
        self.ctl.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_immediate_exit(&self, value: u8) {
        // SAFETY: the address is the `immediate_exit` byte of the vCPU's kvm_run mapping, which
        // lives as long as the VcpuFd; the VcpuFd outlives every holder of this `Shared` (the
        // thread returns it and `VcpuThread::drop` joins). KVM reads the byte on entry, so it
        // is accessed atomically.
        unsafe { AtomicU8::from_ptr(self.immediate_exit as *mut u8) }
            .store(value, Ordering::SeqCst);
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    shared: Arc<Shared>,
    join: Option<JoinHandle<VcpuFd>>,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`; its handler does nothing.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the kick handler once per process, without `SA_RESTART`, so `KVM_RUN` returns
/// `EINTR` instead of being restarted.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"` function that
        // touches nothing, so it is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

impl VcpuThread {
    /// Starts running `vcpu` (its registers already set) on a thread of its own; `device` is
    /// the progress device's state to continue from. Each pass is held to at least `min_pass`
    /// (a paced guest): timing never changes what the guest writes, only when.
    pub fn start(
        mut vcpu: VcpuFd,
        device: ProgressDevice,
        min_pass: Duration,
    ) -> Result<Self, VcpuError> {
        install_kick_handler();
        let immediate_exit = &mut vcpu.get_kvm_run().immediate_exit as *mut u8 as usize;
        let shared = Arc::new(Shared {
            ctl: Mutex::new(Ctl { device, ..Ctl::default() }),
            changed: Condvar::new(),
            immediate_exit,
            thread: AtomicU64::new(0),
            min_pass,
        });
        shared.set_immediate_exit(0);
        let for_thread = Arc::clone(&shared);
        // A failed spawn drops the vCPU with the closure: `shared` is then never touched again
        // (no `VcpuThread`, so no `drop` writes its dangling `immediate_exit`).
        let join = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || run(vcpu, &for_thread))
            .map_err(|e| VcpuError::Spawn { errno: e.raw_os_error().unwrap_or(0) })?;
        Ok(Self { shared, join: Some(join) })
    }

    /// Stops the guest and waits until the thread parked (or the guest had ended); returns
    /// how long that took.
    pub fn pause(&self, limit: Duration) -> Result<Duration, VcpuError> {
        let started = Instant::now();
        let mut ctl = self.shared.lock();
        ctl.pause = true;
        self.shared.set_immediate_exit(1);
        drop(ctl);
        // Wakes a thread holding a pass; the signal gets one out of KVM_RUN.
        self.shared.changed.notify_all();
        self.kick();
        let mut ctl = self.shared.lock();
        while !ctl.parked && ctl.ended.is_none() {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(VcpuError::PauseTimeout { waited_ms: limit.as_millis() as u64 });
            }
            ctl = self
                .shared
                .changed
                .wait_timeout(ctl, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        match &ctl.ended {
            Some(Err(e)) => Err(e.clone()),
            _ => Ok(started.elapsed()),
        }
    }

    /// Lets a paused guest run on.
    pub fn resume(&self) {
        self.shared.lock().pause = false;
        self.shared.changed.notify_all();
    }

    /// The registers and device state of a paused or ended guest.
    pub fn snapshot(&self) -> Option<(CpuState, ProgressDevice)> {
        let ctl = self.shared.lock();
        ctl.snapshot.map(|cpu| (cpu, ctl.device))
    }

    /// The progress device as the guest left it so far.
    pub fn device(&self) -> ProgressDevice {
        self.shared.lock().device
    }

    /// Waits up to `limit` for the guest to halt; `None` if it is still running.
    pub fn wait_ended(&self, limit: Duration) -> Option<Result<(), VcpuError>> {
        let ctl = self.shared.lock();
        let (ctl, _) = self
            .shared
            .changed
            .wait_timeout_while(ctl, limit, |c| c.ended.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ctl.ended.clone()
    }

    fn kick(&self) {
        let thread = self.shared.thread.load(Ordering::SeqCst);
        if thread != 0 {
            // SAFETY: `thread` is the pthread id of our vCPU thread, which stays joinable (so
            // the id stays valid) until `drop` joins it; the signal's handler does nothing.
            unsafe { libc::pthread_kill(thread as libc::pthread_t, kick_signal()) };
        }
    }
}

impl Drop for VcpuThread {
    /// Stops the thread wherever it is (running, parked or ended) and joins it.
    fn drop(&mut self) {
        let mut ctl = self.shared.lock();
        ctl.stop = true;
        self.shared.set_immediate_exit(1);
        drop(ctl);
        self.shared.changed.notify_all();
        self.kick();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// The thread's body: runs the guest until it halts, the VMM stops it, or it fails. Returns
/// the vCPU so that its `kvm_run` mapping outlives every access to `immediate_exit`.
fn run(mut vcpu: VcpuFd, shared: &Shared) -> VcpuFd {
    // SAFETY: pthread_self has no preconditions.
    shared.thread.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
    let mut pass_started = Instant::now();
    loop {
        let (pause, stop) = {
            let ctl = shared.lock();
            // Under the lock, so a pause that sets the byte after this check is never undone.
            if !ctl.pause && !ctl.stop {
                shared.set_immediate_exit(0);
            }
            (ctl.pause, ctl.stop)
        };
        if stop {
            return vcpu;
        }
        if pause {
            if let Err(e) = park(&mut vcpu, shared) {
                return end(vcpu, shared, Err(e));
            }
            continue;
        }
        let ended = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                // A statement of its own: the device's lock must be released before the hold.
                let written = shared.lock().device.on_write(port, data);
                match written {
                    Ok(()) if port == PORT_PASS => {
                        hold(shared, pass_started + shared.min_pass);
                        pass_started = Instant::now();
                        None
                    }
                    Ok(()) => None,
                    Err(e) => Some(Err(e.into())),
                }
            }
            Ok(VcpuExit::Hlt) => Some(Ok(())),
            Ok(exit) => Some(Err(VcpuError::UnexpectedExit { exit: format!("{exit:?}") })),
            Err(e) if e.errno() == libc::EINTR => None,
            Err(e) => Some(Err(VcpuError::Run { errno: e.errno() })),
        };
        if let Some(result) = ended {
            return end(vcpu, shared, result);
        }
    }
}

/// Waits until `until`, or until a pause or stop is asked for.
fn hold(shared: &Shared, until: Instant) {
    let mut ctl = shared.lock();
    while !ctl.pause && !ctl.stop {
        let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
        else {
            return;
        };
        ctl = shared
            .changed
            .wait_timeout(ctl, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|poisoned| poisoned.into_inner().0);
    }
}

/// Records how the guest ended (with its registers, for a save after the end) and waits to
/// be stopped.
fn end(vcpu: VcpuFd, shared: &Shared, result: Result<(), VcpuError>) -> VcpuFd {
    let snapshot = CpuState::read(&vcpu);
    let mut ctl = shared.lock();
    ctl.ended = Some(match (result, snapshot) {
        (Ok(()), Ok(cpu)) => {
            ctl.snapshot = Some(cpu);
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    });
    shared.changed.notify_all();
    while !ctl.stop {
        ctl = shared.changed.wait(ctl).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    vcpu
}

/// Completes pending I/O, snapshots the registers, and waits until resumed or stopped.
fn park(vcpu: &mut VcpuFd, shared: &Shared) -> Result<(), VcpuError> {
    // `immediate_exit` is set: KVM finishes a pending port write, then returns EINTR.
    match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => {}
        Err(e) => return Err(VcpuError::Run { errno: e.errno() }),
        Ok(exit) => {
            return Err(VcpuError::UnexpectedExit { exit: format!("{exit:?} while pausing") })
        }
    }
    let cpu = CpuState::read(vcpu)?;
    let mut ctl = shared.lock();
    ctl.snapshot = Some(cpu);
    ctl.parked = true;
    shared.changed.notify_all();
    while ctl.pause && !ctl.stop {
        ctl = shared.changed.wait(ctl).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    ctl.parked = false;
    Ok(())
}
