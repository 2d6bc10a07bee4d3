//! Robust mutex cost next to plain pthread mutexes, measured in the same run.
//! `cargo bench -p forkroot --bench mutex`

use forkroot::mutex::RobustMutex;
use std::cell::UnsafeCell;
use std::time::Instant;

const REPS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn map_shared<T>() -> *mut T {
    // SAFETY: anonymous shared mapping, no aliasing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

/// A plain pthread mutex with a counter; `pshared` selects the attribute.
#[repr(C)]
struct Plain {
    m: UnsafeCell<libc::pthread_mutex_t>,
    n: UnsafeCell<u64>,
}

impl Plain {
    /// # Safety
    /// `this` is valid, aligned, unshared memory.
    unsafe fn init(this: *mut Plain, pshared: bool) {
        let mut attr = std::mem::MaybeUninit::uninit();
        // SAFETY: initialising a local attribute, then the mutex in place.
        unsafe {
            libc::pthread_mutexattr_init(attr.as_mut_ptr());
            if pshared {
                libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
            }
            libc::pthread_mutex_init(
                UnsafeCell::raw_get(std::ptr::addr_of!((*this).m)),
                attr.as_ptr(),
            );
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
            (*this).n.get().write(0);
        }
    }
    fn bump(&self) {
        // SAFETY: initialised mutex; the counter is touched only under it.
        unsafe {
            libc::pthread_mutex_lock(self.m.get());
            *self.n.get() += 1;
            libc::pthread_mutex_unlock(self.m.get());
        }
    }
}

fn bump_robust(m: &RobustMutex<u64>) {
    if let Ok(mut g) = m.lock() {
        *g += 1;
    }
}

fn per_op(iters: u64, f: impl Fn()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Two processes each doing `iters` lock/increment/unlock; ns per operation.
fn contended(iters: u64, f: impl Fn()) -> f64 {
    let t = Instant::now();
    // SAFETY: single-threaded bench process; the child only runs `f` and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    for _ in 0..iters {
        f();
    }
    if pid == 0 {
        // SAFETY: end the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    t.elapsed().as_nanos() as f64 / (2 * iters) as f64
}

fn main() {
    let robust: *mut RobustMutex<u64> = map_shared();
    let plain_shared: *mut Plain = map_shared();
    let plain_private: *mut Plain =
        Box::into_raw(Box::new(std::mem::MaybeUninit::<Plain>::uninit())).cast();
    // SAFETY: fresh, aligned memory, not yet shared.
    unsafe {
        RobustMutex::init(robust, 0).unwrap();
        Plain::init(plain_shared, true);
        Plain::init(plain_private, false);
    }
    // SAFETY: initialised above; live until exit.
    let (robust, plain_shared, plain_private) =
        unsafe { (&*robust, &*plain_shared, &*plain_private) };

    let n = 2_000_000;
    let (mut r, mut p) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        r.push(per_op(n, || bump_robust(robust)));
        p.push(per_op(n, || plain_private.bump()));
    }
    let (r, p) = (median(r), median(p));
    println!("mutex uncontended lock+unlock: robust pshared {r:.1} ns/op, plain private pthread {p:.1} ns/op, ratio {:.2}", r / p);

    let n = 300_000;
    let (mut r, mut p) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        r.push(contended(n, || bump_robust(robust)));
        p.push(contended(n, || plain_shared.bump()));
    }
    let (r, p) = (median(r), median(p));
    println!("mutex contended, 2 processes: robust pshared {r:.1} ns/op, plain pshared pthread {p:.1} ns/op, ratio {:.2}", r / p);
    println!("(median of {REPS} runs each)");
}
