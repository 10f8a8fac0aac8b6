//! vCPU threads: the KVM_RUN loop, port-I/O dispatch, and the pause/resume handshake.
//!
//! Each vCPU runs on its own thread and owns its `VcpuFd` (behind a mutex) while it runs. A
//! pause request sets a per-vCPU flag, sets `immediate_exit` in the vCPU's `kvm_run` page and
//! sends a real-time signal to the thread, so KVM_RUN returns EINTR even when the vCPU is
//! blocked on a userfaultfd fault (the kernel retries the fault after the signal). The thread
//! then completes any pending I/O with one more KVM_RUN (immediate_exit still set), releases
//! the `VcpuFd` so the VMM can read or write its state, and waits on a condvar until resume.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::devices::{Devices, IoAction};
use super::error::{VcpuFault, VmError};

/// Where a vCPU is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuRun {
    /// Created, thread not spawned.
    NotStarted,
    /// Thread inside its run loop.
    Running,
    /// Thread parked by a pause.
    Paused,
    /// The guest reported its digest and wrote the done port.
    Finished(u64),
    /// The thread stopped on an error.
    Failed(VcpuFault),
    /// The thread left because the VM is being dropped.
    Exited,
}

impl VcpuRun {
    /// True when the thread is not inside KVM_RUN and will not enter it until resumed.
    pub fn is_quiet(&self) -> bool {
        !matches!(self, VcpuRun::Running)
    }
}

/// What the VMM wants the vCPU threads to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Run,
    Pause,
    Stop,
}

#[derive(Debug)]
pub(crate) struct CtlState {
    pub want: Want,
    pub vcpus: Vec<VcpuRun>,
}

/// Run states of all vCPUs, shared by the VMM and the vCPU threads.
#[derive(Debug)]
pub(crate) struct Control {
    pub state: Mutex<CtlState>,
    pub cv: Condvar,
}

impl Control {
    pub fn new(vcpus: u32) -> Control {
        Control {
            state: Mutex::new(CtlState {
                want: Want::Run,
                vcpus: vec![VcpuRun::NotStarted; vcpus as usize],
            }),
            cv: Condvar::new(),
        }
    }

    /// Locks the state; a poisoned lock (a panicking vCPU thread) still yields the state.
    pub fn lock(&self) -> MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, index: u32, run: VcpuRun) {
        let mut st = self.lock();
        if let Some(slot) = st.vcpus.get_mut(index as usize) {
            *slot = run;
        }
        self.cv.notify_all();
    }
}

/// The means to interrupt one vCPU thread.
#[derive(Debug)]
pub(crate) struct Kick {
    pub pause: AtomicBool,
    immediate_exit: *const AtomicU8,
    thread: AtomicU64,
    /// The thread's kernel id (0 until it runs): userfaultfd names a faulting thread by it.
    tid: AtomicU32,
}

// SAFETY: `immediate_exit` points into the vCPU's kvm_run mapping, which lives as long as the
// VcpuFd the Vm keeps; the byte is only accessed atomically.
unsafe impl Send for Kick {}
// SAFETY: as above.
unsafe impl Sync for Kick {}

impl Kick {
    /// Remembers where `vcpu`'s immediate_exit byte is.
    pub fn new(vcpu: &mut VcpuFd) -> Kick {
        let p: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
        Kick {
            pause: AtomicBool::new(false),
            immediate_exit: p.cast(),
            thread: AtomicU64::new(0),
            tid: AtomicU32::new(0),
        }
    }

    fn set_immediate_exit(&self, v: u8) {
        // SAFETY: the pointer is into the live kvm_run mapping (see the Send impl); AtomicU8 has
        // the alignment and size of u8, and the kernel reads the byte only at KVM_RUN entry.
        unsafe { &*self.immediate_exit }.store(v, Ordering::SeqCst);
    }

    /// Asks the thread to pause: flag, immediate_exit, signal (when the thread is running).
    pub fn request_pause(&self, running: bool) {
        self.pause.store(true, Ordering::SeqCst);
        self.set_immediate_exit(1);
        if running {
            self.signal();
        }
    }

    /// Whether this vCPU's thread has kernel id `tid`.
    pub fn runs_on(&self, tid: u32) -> bool {
        tid != 0 && self.tid.load(Ordering::SeqCst) == tid
    }

    fn signal(&self) {
        let t = self.thread.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: `t` is the pthread_t of a thread that is still inside its run loop (the
            // caller holds the control lock and saw it Running; it cannot exit without that
            // lock). A failure (ESRCH) is harmless: the re-kick loop covers it.
            unsafe {
                libc::pthread_kill(t as libc::pthread_t, kick_signal());
            }
        }
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the (empty) kick signal handler once per process.
pub(crate) fn install_kick_handler() -> Result<(), VmError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(VmError::Signal)
}

/// Everything a vCPU thread needs.
pub(crate) struct VcpuThread {
    pub index: u32,
    pub fd: Arc<Mutex<VcpuFd>>,
    pub kick: Arc<Kick>,
    pub ctl: Arc<Control>,
    pub devices: Arc<Mutex<Devices>>,
}

enum Step {
    Continue,
    Done(u64),
    Fault(VcpuFault),
}

impl VcpuThread {
    /// The thread body.
    pub fn run(self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.kick.thread.store(me as u64, Ordering::SeqCst);
        // SAFETY: gettid has no preconditions. Stored before the first KVM_RUN, so any fault
        // this vCPU raises is read after its tid is known.
        let tid = unsafe { libc::gettid() };
        self.kick.tid.store(tid as u32, Ordering::SeqCst);
        let mut fd = lock(&self.fd);
        loop {
            if self.kick.pause.load(Ordering::SeqCst) {
                complete_pending_io(&mut fd, &self.kick);
                drop(fd);
                if !self.park() {
                    self.ctl.set(self.index, VcpuRun::Exited);
                    return;
                }
                fd = lock(&self.fd);
                continue;
            }
            let end = match self.step(&mut fd) {
                Step::Continue => continue,
                Step::Done(digest) => {
                    // Leave RIP after the done `out`, so saved state is consistent.
                    complete_pending_io(&mut fd, &self.kick);
                    VcpuRun::Finished(digest)
                }
                Step::Fault(f) => VcpuRun::Failed(f.with_rip(rip(&fd))),
            };
            drop(fd);
            self.ctl.set(self.index, end);
            return;
        }
    }

    /// Marks the vCPU paused and waits; returns false when the VM is stopping.
    fn park(&self) -> bool {
        let mut st = self.ctl.lock();
        if let Some(s) = st.vcpus.get_mut(self.index as usize) {
            *s = VcpuRun::Paused;
        }
        self.ctl.cv.notify_all();
        while st.want == Want::Pause {
            st = self.ctl.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.want == Want::Stop {
            return false;
        }
        if let Some(s) = st.vcpus.get_mut(self.index as usize) {
            *s = VcpuRun::Running;
        }
        true
    }

    fn step(&self, fd: &mut VcpuFd) -> Step {
        let r = match fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                match lock(&self.devices).io_out(self.index, port, data) {
                    Ok(IoAction::Continue) => Ok(Step::Continue),
                    Ok(IoAction::Done(d)) => Ok(Step::Done(d)),
                    Err(e) => Err(e),
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                lock(&self.devices).io_in(self.index, port, data).map(|()| Step::Continue)
            }
            Ok(exit) => Ok(classify(exit)),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Clear before the pause flag is read at the loop top: a pause requested after
                // this point sets immediate_exit again, so the next KVM_RUN still returns.
                self.kick.set_immediate_exit(0);
                Ok(Step::Continue)
            }
            Err(e) => Ok(Step::Fault(VcpuFault::Run { errno: e.errno() })),
        };
        match r {
            Ok(step) => step,
            Err(source) => Step::Fault(VcpuFault::Port { rip: rip(fd), source }),
        }
    }
}

fn classify(exit: VcpuExit<'_>) -> Step {
    match exit {
        VcpuExit::Shutdown => Step::Fault(VcpuFault::Shutdown { rip: 0 }),
        VcpuExit::MmioRead(addr, _) => mmio("read", addr),
        VcpuExit::MmioWrite(addr, _) => mmio("write", addr),
        VcpuExit::FailEntry(reason, _) => Step::Fault(VcpuFault::FailEntry { reason, rip: 0 }),
        VcpuExit::Intr => Step::Continue,
        other => Step::Fault(VcpuFault::UnexpectedExit { exit: format!("{other:?}"), rip: 0 }),
    }
}

fn mmio(dir: &'static str, addr: u64) -> Step {
    Step::Fault(VcpuFault::Mmio { dir, addr, rip: 0 })
}

fn rip(fd: &VcpuFd) -> u64 {
    fd.get_regs().map(|r| r.rip).unwrap_or(u64::MAX)
}

/// One KVM_RUN with immediate_exit set: KVM finishes the instruction of the last I/O exit
/// (for an `in`, it copies the data into the register; RIP moves past it) and returns EINTR
/// without entering the guest. Without it, state saved after an I/O exit would replay or lose
/// the access.
fn complete_pending_io(fd: &mut VcpuFd, kick: &Kick) {
    kick.set_immediate_exit(1);
    let _ = fd.run();
    kick.set_immediate_exit(0);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pauses every running vCPU; returns the time until the last one acknowledged.
pub(crate) fn pause_all(
    ctl: &Control,
    kicks: &[Arc<Kick>],
    timeout: Duration,
) -> Result<Duration, VmError> {
    let t0 = Instant::now();
    let mut st = ctl.lock();
    st.want = Want::Pause;
    for (k, run) in kicks.iter().zip(&st.vcpus) {
        k.request_pause(*run == VcpuRun::Running);
    }
    loop {
        let Some(busy) = st.vcpus.iter().position(|r| !r.is_quiet()) else {
            return Ok(t0.elapsed());
        };
        if t0.elapsed() > timeout {
            return Err(VmError::PauseTimeout {
                vcpu: busy as u32,
                waited_ms: t0.elapsed().as_millis() as u64,
            });
        }
        st = ctl
            .cv
            .wait_timeout(st, Duration::from_millis(1))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
        // Re-kick: a signal that landed just before KVM_RUN is covered by immediate_exit, but
        // re-sending costs nothing and covers any window we did not foresee.
        for (k, run) in kicks.iter().zip(&st.vcpus) {
            if *run == VcpuRun::Running {
                k.request_pause(true);
            }
        }
    }
}

/// Lets paused vCPUs run again.
pub(crate) fn resume_all(ctl: &Control, kicks: &[Arc<Kick>]) {
    let mut st = ctl.lock();
    for k in kicks {
        k.pause.store(false, Ordering::SeqCst);
    }
    st.want = Want::Run;
    ctl.cv.notify_all();
}
