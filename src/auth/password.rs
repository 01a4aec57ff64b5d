//! Password hashing (argon2id, PHC strings) and the password policy (length bounds and the
//! common-passwords list).
//!
//! Owns: the argon2 parameters new hashes are made with, the timing equaliser for logins of
//! unknown accounts, and the bundled list of common passwords. Leaf module: it knows nothing of
//! users, the store or HTTP. Hashing and verifying are CPU-heavy (tens of milliseconds) and
//! synchronous; on the runtime, call them through [`hash_blocking`] / [`verify_blocking`], which
//! run on a few low-priority threads of their own (see `HashPool`). Passwords are never logged, formatted or put in an error.

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

// The first argon2id option of the OWASP Password Storage Cheat Sheet: m = 19 MiB (in KiB),
// t = 2, p = 1; 32-byte output. Salts are 16 random bytes (`SaltString::generate`).
const PARAMS: Params = match Params::new(19 * 1024, 2, 1, Some(32)) {
    Ok(params) => params,
    Err(_) => panic!("invalid argon2 parameters"),
};

// Memory cost above which a stored hash is refused rather than verified: argon2 allocates
// m KiB up front and an allocation failure aborts the process, so a corrupt row claiming
// m=4294967295 must not reach it. 1 GiB is 50 times the current cost.
const MAX_VERIFY_M_COST_KIB: u32 = 1024 * 1024;

/// Longest accepted password, in Unicode scalar values. NIST SP 800-63B asks verifiers to accept
/// at least 64 characters; 128 leaves room for any passphrase while refusing multi-kilobyte
/// inputs that only cost request memory and hashing time.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Why hashing or verifying failed. Never carries the password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The stored hash is not an argon2 PHC string this module can verify against (garbage,
    /// another algorithm, out-of-range parameters, missing salt or output).
    #[error("stored password hash is not a valid argon2 PHC string")]
    InvalidHash(#[source] password_hash::Error),
    /// Hashing itself failed.
    #[error("password hashing failed")]
    Hashing(#[source] password_hash::Error),
    /// The hashing thread panicked, or the hashing threads are gone.
    #[error("password hashing task did not complete")]
    Worker,
    /// More hashes are waiting than [`MAX_QUEUED`]: the gateway is flooded with logins.
    #[error("too many password hashes waiting")]
    Busy,
}

/// A password refused by [`check_policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyViolation {
    /// Fewer than `min` characters.
    TooShort {
        /// The configured minimum.
        min: usize,
    },
    /// More than `max` characters.
    TooLong {
        /// [`MAX_PASSWORD_CHARS`].
        max: usize,
    },
    /// In the bundled common-passwords list (compared case-insensitively).
    Common,
}

impl PolicyViolation {
    /// The text for an API `errors[].message` about the password field, e.g. "must be at least 8
    /// characters".
    pub fn message(&self) -> String {
        match self {
            Self::TooShort { min } => format!("must be at least {min} characters"),
            Self::TooLong { max } => format!("must be at most {max} characters"),
            Self::Common => "is too common; choose a less guessable password".to_owned(),
        }
    }
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
}

/// Hashes `password` with argon2id (m=19456 KiB, t=2, p=1, 32-byte output) and a fresh random
/// 16-byte salt from the OS, into a PHC string: `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
///
/// # Errors
/// [`PasswordError::Hashing`] if argon2 refuses the input (it does not for any `&str` of a
/// realistic size).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(PasswordError::Hashing)
}

/// Checks `password` against a stored PHC string. The argon2 variant, version and parameters
/// come from the string, so hashes made with older or other argon2 parameters still verify.
/// The output comparison is constant-time.
///
/// # Errors
/// [`PasswordError::InvalidHash`] if `phc` cannot be parsed, names an algorithm or parameters
/// argon2 cannot use, or asks for more than 1 GiB of memory; a wrong password is `Ok(false)`,
/// never an error.
pub fn verify_password(password: &str, phc: &str) -> Result<bool, PasswordError> {
    let hash = PasswordHash::new(phc).map_err(PasswordError::InvalidHash)?;
    // Without these the verifier answers "wrong password" to every input: a stored hash lacking
    // them is corrupt, not a mismatch.
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(PasswordError::InvalidHash(
            password_hash::Error::PhcStringField,
        ));
    }
    let params = Params::try_from(&hash).map_err(PasswordError::InvalidHash)?;
    if params.m_cost() > MAX_VERIFY_M_COST_KIB {
        return Err(PasswordError::InvalidHash(
            password_hash::errors::InvalidValue::TooLong.param_error(),
        ));
    }
    match hasher().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(password_hash::Error::Password) => Ok(false),
        Err(e @ password_hash::Error::Crypto) => Err(PasswordError::Hashing(e)),
        // The rest describe the stored string: algorithm, version, parameters, encoding.
        Err(e) => Err(PasswordError::InvalidHash(e)),
    }
}

// PHC string of a fixed password hashed with `PARAMS` (the tests check both: it is the
// argon2 CLI's output in `reference_implementation_hashes_verify`). Verifying against
// it costs what a real verification costs (parsing included), so a login naming an unknown
// account takes as long as one with a wrong password. A constant rather than made at start:
// hashing it at start left argon2's 19 MiB block in the allocator of an otherwise idle
// gateway (idle RSS 45 MiB instead of under 20). Knowing its password gives nothing:
// `verify_dummy` throws the answer away.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$Z2F0ZWhvdXNlLXNhbHQxNg$bsXFENIwjcWvJE0fNSKGJUdiUsIMdeBM0ApgamQdnew";

/// Spends the time of one [`verify_password`] against a hash made with the current parameters
/// and discards the result: for logins naming an account that does not exist (SPEC section 4,
/// similar timing).
pub fn verify_dummy(password: &str) {
    let _ = verify_password(password, DUMMY_HASH);
}

/// Hashes waiting for a hashing thread before new ones are refused with
/// [`PasswordError::Busy`] (the login limits make this a flood, not real users).
pub const MAX_QUEUED: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

/// A hashing thread with nothing to do for this long exits; the next job starts one again
/// (tens of microseconds, against tens of milliseconds of argon2).
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The threads that run argon2, at the lowest CPU priority (nice 19), started when there is
/// work and gone when there is none.
///
/// Why not tokio's blocking pool: it grows to 512 threads, so 20 concurrent logins become 20
/// threads at normal priority competing with the runtime's one or two, and proxied requests
/// waited up to 36 times longer (p99, `benches/login-storm.sh`). Here at most one hash runs
/// per core, and because the kernel gives a nice-19 thread about 1/70 of the CPU of a normal
/// one when both want it, proxied traffic keeps its latency while logins use whatever CPU is
/// idle. Under a proxy load that saturates every core, logins slow down instead.
///
/// Why they exit when idle: a gateway on one CPU then serves from a single thread, and Linux
/// skips taking a file reference on each socket call of a process whose fd table no other
/// thread shares (see `cli::runtime`).
struct HashPool {
    state: std::sync::Mutex<PoolState>,
    work: std::sync::Condvar,
    max_threads: usize,
    idle_exit: std::time::Duration,
}

#[derive(Default)]
struct PoolState {
    queue: std::collections::VecDeque<Job>,
    threads: usize,
    idle: usize,
}

impl HashPool {
    fn new(max_threads: usize, idle_exit: std::time::Duration) -> Self {
        Self {
            state: std::sync::Mutex::new(PoolState::default()),
            work: std::sync::Condvar::new(),
            max_threads,
            idle_exit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A job runs outside the lock, so a poisoned lock only means a panic in the few lines
        // below; the counts are still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `job` and wakes or starts a thread for it.
    fn submit(&'static self, job: Job) -> Result<(), PasswordError> {
        let mut st = self.lock();
        if st.queue.len() >= MAX_QUEUED {
            return Err(PasswordError::Busy);
        }
        st.queue.push_back(job);
        if st.idle > 0 {
            self.work.notify_one();
        }
        // Jobs nobody is free for yet get a thread of their own, up to one per core.
        if st.queue.len() > st.idle && st.threads < self.max_threads {
            st.threads += 1;
            drop(st);
            if self.start_thread().is_err() {
                let mut st = self.lock();
                st.threads -= 1;
                if st.threads == 0 {
                    // Nobody will run them: dropping a job drops its answer channel, so its
                    // caller (this one too) gets `Worker` rather than waiting forever.
                    let orphans = std::mem::take(&mut st.queue);
                    drop(st);
                    drop(orphans);
                    return Err(PasswordError::Worker);
                }
            }
        }
        Ok(())
    }

    /// Starts one thread, counted by the caller in `threads` beforehand.
    fn start_thread(&'static self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("gatehouse-hash".into())
            .spawn(move || {
                if let Err(e) =
                    thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
                {
                    tracing::warn!(target: "gatehouse::auth", error = %e, "cannot lower the priority of a password-hashing thread");
                }
                self.work_loop();
            })
            .map(drop)
    }

    fn work_loop(&self) {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                // A panic fails only its own job (its caller sees the answer channel
                // dropped); the thread and the counts stay as they are.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                st = self.lock();
                continue;
            }
            st.idle += 1;
            let (guard, wait) = self
                .work
                .wait_timeout(st, self.idle_exit)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st = guard;
            st.idle -= 1;
            if wait.timed_out() && st.queue.is_empty() {
                st.threads -= 1;
                return;
            }
        }
    }
}

static POOL: LazyLock<HashPool> = LazyLock::new(|| {
    HashPool::new(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        IDLE_EXIT,
    )
});

/// Checks that a hashing thread can be started (it exits again after [`IDLE_EXIT`]), so a
/// machine that cannot start threads fails at start rather than at the first login.
///
/// # Errors
/// [`PasswordError::Worker`] when no thread could be started.
pub fn start_hash_pool() -> Result<(), PasswordError> {
    let pool: &'static HashPool = &POOL;
    let mut st = pool.lock();
    if st.threads > 0 {
        return Ok(());
    }
    st.threads += 1;
    drop(st);
    pool.start_thread().map_err(|_| {
        pool.lock().threads -= 1;
        PasswordError::Worker
    })
}

/// Runs `f` on the hashing threads and waits for its result without blocking the runtime.
async fn on_hash_pool<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    POOL.submit(Box::new(move || {
        // A dropped receiver means the request went away; nothing to tell.
        let _ = tx.send(f());
    }))?;
    rx.await.map_err(|_| PasswordError::Worker)
}

/// [`hash_password`] on the low-priority hashing threads.
///
/// # Errors
/// As [`hash_password`], plus [`PasswordError::Busy`] when too many hashes wait and
/// [`PasswordError::Worker`] if the hashing thread failed.
pub async fn hash_blocking(password: String) -> Result<String, PasswordError> {
    on_hash_pool(move || hash_password(&password)).await?
}

/// [`verify_password`] on the low-priority hashing threads. With `phc` `None` (no such
/// account) it runs [`verify_dummy`] instead and answers `Ok(false)`, taking about as long.
///
/// # Errors
/// As [`hash_blocking`].
pub async fn verify_blocking(password: String, phc: Option<String>) -> Result<bool, PasswordError> {
    on_hash_pool(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => {
            verify_dummy(&password);
            Ok(false)
        }
    })
    .await?
}

// Django 5.2.19 (PyPI `django`, BSD-3-Clause): contrib/auth/common-passwords.txt.gz, 19,640 lines.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().collect());

/// Checks `password` against the policy: at least `min_length` and at most
/// [`MAX_PASSWORD_CHARS`] characters (Unicode scalar values, so "ü" counts once), and not in the
/// bundled common-passwords list, compared case-insensitively. Nothing is trimmed or
/// normalised: the password is checked as it will be hashed.
///
/// # Errors
/// The first rule broken, in that order.
pub fn check_policy(password: &str, min_length: usize) -> Result<(), PolicyViolation> {
    let chars = password.chars().count();
    if chars < min_length {
        return Err(PolicyViolation::TooShort { min: min_length });
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(PolicyViolation::TooLong {
            max: MAX_PASSWORD_CHARS,
        });
    }
    if COMMON_PASSWORDS.contains(password.to_lowercase().as_str()) {
        return Err(PolicyViolation::Common);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(phc.starts_with(PREFIX), "{phc}");
        assert!(verify_password("correct horse battery staple", &phc).unwrap());
        assert!(!verify_password("correct horse battery stapler", &phc).unwrap());
        assert!(!verify_password("", &phc).unwrap());
    }

    #[test]
    fn phc_has_16_byte_salt_and_32_byte_output() {
        let phc = hash_password("pw").unwrap();
        let parsed = PasswordHash::new(&phc).unwrap();
        let mut salt = [0u8; 64];
        assert_eq!(
            parsed.salt.unwrap().decode_b64(&mut salt).unwrap().len(),
            16
        );
        assert_eq!(parsed.hash.unwrap().len(), 32);
    }

    #[test]
    fn same_password_hashes_differ() {
        let a = hash_password("same password").unwrap();
        let b = hash_password("same password").unwrap();
        assert_ne!(a, b);
        assert!(verify_password("same password", &a).unwrap());
        assert!(verify_password("same password", &b).unwrap());
    }

    #[test]
    fn unusable_hash_is_an_error() {
        let good = hash_password("pw").unwrap();
        let no_output = good.rsplit_once('$').unwrap().0.to_owned();
        for phc in [
            "",
            "garbage",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$!!!",
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            &no_output,
        ] {
            assert!(
                matches!(
                    verify_password("pw", phc),
                    Err(PasswordError::InvalidHash(_))
                ),
                "{phc:?} -> {:?}",
                verify_password("pw", phc)
            );
        }
    }

    #[test]
    fn verifies_hashes_made_with_other_parameters() {
        let params = Params::new(8192, 1, 1, Some(32)).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        let other = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"older hash", &salt)
            .unwrap()
            .to_string();
        assert!(
            other.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"),
            "{other}"
        );
        assert!(verify_password("older hash", &other).unwrap());
        assert!(!verify_password("older hash!", &other).unwrap());
    }

    #[test]
    fn reference_implementation_hashes_verify() {
        // Made by the reference implementation's CLI (phc-winner-argon2, Debian `argon2`):
        // echo -n 'correct horse battery staple' | argon2 gatehouse-salt16 -id -t 2 -k 19456 -p 1 -l 32 -e
        // (the dummy hash for unknown accounts is this string)
        let id = DUMMY_HASH;
        assert!(verify_password("correct horse battery staple", id).unwrap());
        assert!(!verify_password("correct horse battery stapl", id).unwrap());
        // echo -n password | argon2 somesaltsomesalt -i -t 1 -k 8192 -p 2 -l 16 -e
        let i = "$argon2i$v=19$m=8192,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$9iGx2r9+7HJ9ZLl4ZmiQVg";
        assert!(verify_password("password", i).unwrap());
        assert!(!verify_password("Password", i).unwrap());
    }

    #[test]
    fn dummy_hash_uses_current_parameters() {
        assert!(DUMMY_HASH.starts_with(PREFIX), "{DUMMY_HASH}");
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (PARAMS.m_cost(), PARAMS.t_cost(), PARAMS.p_cost())
        );
        verify_dummy("anything");
    }

    fn pool_threads(pool: &HashPool) -> usize {
        pool.lock().threads
    }

    #[test]
    fn hash_threads_start_on_demand_and_exit_when_idle() {
        let pool: &'static HashPool = Box::leak(Box::new(HashPool::new(
            2,
            std::time::Duration::from_millis(150),
        )));
        assert_eq!(pool_threads(pool), 0, "nothing runs before the first job");
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..4 {
            let tx = tx.clone();
            pool.submit(Box::new(move || {
                std::thread::sleep(std::time::Duration::from_millis(30));
                tx.send((i, std::thread::current().id())).unwrap();
            }))
            .unwrap();
        }
        let done: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        let mut ids: Vec<_> = done.iter().map(|(_, id)| *id).collect();
        ids.sort_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert_eq!(
            ids.len(),
            2,
            "one thread per allowed core, reused: {done:?}"
        );
        assert_eq!(pool_threads(pool), 2);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pool_threads(pool) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "idle threads did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        // A job after they left starts a thread again; a panicking job fails alone.
        pool.submit(Box::new(|| panic!("a job that panics")))
            .unwrap();
        let tx2 = tx.clone();
        pool.submit(Box::new(move || {
            tx2.send((9, std::thread::current().id())).unwrap()
        }))
        .unwrap();
        assert_eq!(rx.recv().unwrap().0, 9);
        assert!(pool_threads(pool) >= 1);
    }

    #[test]
    fn a_full_hash_queue_refuses() {
        let pool: &'static HashPool = Box::leak(Box::new(HashPool::new(
            1,
            std::time::Duration::from_millis(50),
        )));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        pool.submit(Box::new(move || {
            started_tx.send(()).unwrap();
            let _ = wait.recv();
        }))
        .unwrap();
        started.recv().unwrap();
        for _ in 0..MAX_QUEUED {
            pool.submit(Box::new(|| {})).unwrap();
        }
        assert!(matches!(
            pool.submit(Box::new(|| {})),
            Err(PasswordError::Busy)
        ));
        release.send(()).unwrap();
    }

    #[tokio::test]
    async fn blocking_wrappers() {
        let phc = hash_blocking("async pw".to_owned()).await.unwrap();
        assert!(
            verify_blocking("async pw".to_owned(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify_blocking("wrong".to_owned(), Some(phc))
                .await
                .unwrap()
        );
        assert!(!verify_blocking("async pw".to_owned(), None).await.unwrap());
        assert!(matches!(
            verify_blocking("pw".to_owned(), Some("nope".to_owned())).await,
            Err(PasswordError::InvalidHash(_))
        ));
    }

    #[test]
    fn error_messages_carry_no_password() {
        let e = verify_password("hunter2-secret", "garbage").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }

    #[test]
    fn list_contains_the_obvious_and_is_lowercase() {
        for pw in [
            "password",
            "12345678",
            "qwerty123",
            "iloveyou",
            "password1",
            "123456",
        ] {
            assert!(COMMON_PASSWORDS.contains(pw), "{pw}");
        }
        assert!(
            COMMON_PASSWORDS.len() > 10_000,
            "{}",
            COMMON_PASSWORDS.len()
        );
        assert!(
            COMMON_PASSWORDS
                .iter()
                .all(|p| !p.is_empty() && *p == p.to_lowercase())
        );
    }

    #[test]
    fn policy_length_bounds() {
        assert_eq!(
            check_policy("Xy7#kq", 8),
            Err(PolicyViolation::TooShort { min: 8 })
        );
        let long = "vR9!".repeat(33);
        assert_eq!(
            check_policy(&long, 8),
            Err(PolicyViolation::TooLong { max: 128 })
        );
        assert_eq!(check_policy(&long[..128], 8), Ok(()));
        assert_eq!(check_policy("", 0), Ok(()));
    }

    #[test]
    fn policy_counts_chars_not_bytes() {
        // 8 chars, 16 bytes: long enough for min 8, too short for min 9.
        let pw = "ÿøüßéñçå";
        assert_eq!(pw.len(), 16);
        assert_eq!(check_policy(pw, 8), Ok(()));
        assert_eq!(
            check_policy(pw, 9),
            Err(PolicyViolation::TooShort { min: 9 })
        );
        // 128 four-byte chars are allowed, 129 are not.
        assert_eq!(check_policy(&"🔑".repeat(128), 8), Ok(()));
        assert_eq!(
            check_policy(&"🔑".repeat(129), 8),
            Err(PolicyViolation::TooLong { max: 128 })
        );
    }

    #[test]
    fn policy_refuses_common_case_insensitively() {
        for pw in [
            "password1",
            "Password1",
            "PASSWORD1",
            "iLoveYou",
            "qwerty123",
        ] {
            assert_eq!(check_policy(pw, 8), Err(PolicyViolation::Common), "{pw}");
        }
        // Length is checked first: a short common password is reported as too short.
        assert_eq!(
            check_policy("123456", 8),
            Err(PolicyViolation::TooShort { min: 8 })
        );
        assert_eq!(check_policy("123456", 6), Err(PolicyViolation::Common));
    }

    #[test]
    fn policy_accepts_a_good_password() {
        assert_eq!(check_policy("t4Vq-Lm9z!pR2wXe", 8), Ok(()));
        assert_eq!(check_policy("correct horse battery staple", 12), Ok(()));
    }

    #[test]
    fn violation_messages() {
        assert_eq!(
            PolicyViolation::TooShort { min: 8 }.message(),
            "must be at least 8 characters"
        );
        assert_eq!(
            PolicyViolation::TooLong { max: 128 }.message(),
            "must be at most 128 characters"
        );
        assert_eq!(
            PolicyViolation::Common.message(),
            "is too common; choose a less guessable password"
        );
    }
}
