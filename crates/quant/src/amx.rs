//! Whether Intel AMX tiles can be used here, asked of the CPU, the OS and a trial run.
//!
//! CPUID alone is not enough: some virtual machines advertise AMX while the hypervisor traps
//! its instructions (llama.cpp's AMX path dies there with SIGILL). So, in order: CPUID lists
//! AMX-TILE and AMX-INT8; the OS has enabled the tile state in XCR0 (XTILECFG, XTILEDATA);
//! Linux grants this process the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); and one tile
//! instruction sequence runs in a forked child without a signal. Only then is the answer yes.

use std::sync::OnceLock;

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmxSupport {
    /// Tiles work in this process.
    Usable,
    /// Not here, and why (for `--verbose`).
    Unavailable(String),
}

impl AmxSupport {
    /// True when tiles work.
    pub fn is_usable(&self) -> bool {
        *self == AmxSupport::Usable
    }
}

/// The probe, run once per process.
pub fn amx_support() -> &'static AmxSupport {
    static ANSWER: OnceLock<AmxSupport> = OnceLock::new();
    ANSWER.get_or_init(probe)
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn probe() -> AmxSupport {
    AmxSupport::Unavailable("AMX is probed on x86-64 Linux only".into())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn probe() -> AmxSupport {
    use std::arch::x86_64::__cpuid_count;
    let no = |why: &str| AmxSupport::Unavailable(why.to_string());
    // SAFETY: CPUID is available on every x86-64 CPU (a safe function in newer Rust).
    #[allow(unused_unsafe)]
    let (leaf1, leaf7) = unsafe { (__cpuid_count(1, 0), __cpuid_count(7, 0)) };
    let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
    if !(tile && int8) {
        return no("CPUID lists no AMX-TILE and AMX-INT8");
    }
    if leaf1.ecx >> 27 & 1 == 0 {
        return no("the OS has not enabled XSAVE (CPUID OSXSAVE)");
    }
    // SAFETY: OSXSAVE is set, so XGETBV is available.
    let xcr0 = unsafe { xgetbv0() };
    if xcr0 >> 17 & 3 != 3 {
        return no("the OS has not enabled the tile state (XCR0 bits 17-18)");
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    if unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } != 0 {
        return AmxSupport::Unavailable(format!("Linux refused the tile data permission: {}", std::io::Error::last_os_error()));
    }
    trial()
}

/// XCR0, read with XGETBV (raw bytes: no target feature needed to assemble it).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // xgetbv
    std::arch::asm!(".byte 0x0f, 0x01, 0xd0", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    (hi as u64) << 32 | lo as u64
}

/// Loads a tile configuration, zeroes a tile and releases the state in a forked child; yes
/// when the child exits cleanly, no when a signal (a trapping hypervisor) ends it.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn trial() -> AmxSupport {
    // Palette 1, tile 0 of 16 rows of 64 bytes.
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    cfg[16] = 64;
    cfg[48] = 16;
    // SAFETY: the child runs only the tile instructions and _exit (async-signal-safe); the
    // parent waits for it.
    unsafe {
        match libc::fork() {
            -1 => AmxSupport::Unavailable(format!("cannot fork the trial: {}", std::io::Error::last_os_error())),
            0 => {
                // ldtilecfg [rax]; tilezero tmm0; tilerelease
                std::arch::asm!(
                    ".byte 0xc4, 0xe2, 0x78, 0x49, 0x00",
                    ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc0",
                    ".byte 0xc4, 0xe2, 0x78, 0x49, 0xc0",
                    in("rax") cfg.as_ptr(),
                    options(nostack),
                );
                libc::_exit(0)
            }
            child => {
                let mut status = 0;
                if libc::waitpid(child, &mut status, 0) != child {
                    return AmxSupport::Unavailable("the trial child was lost".into());
                }
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    AmxSupport::Usable
                } else if libc::WIFSIGNALED(status) {
                    AmxSupport::Unavailable(format!("CPUID and the OS offer AMX but a tile instruction trapped (signal {})", libc::WTERMSIG(status)))
                } else {
                    AmxSupport::Unavailable(format!("the trial ended with status {status}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe answers without crashing on whatever this machine is, the same every time,
    /// and its answer agrees with CPUID: no AMX listed, never usable. (CI's Xeons that list
    /// AMX and trap it exercise the trial; the GPU machine's host, where tiles work, says yes.)
    #[test]
    fn the_probe_answers_and_never_trusts_cpuid_alone() {
        let answer = amx_support();
        println!("AMX: {answer:?}");
        assert_eq!(answer, amx_support());
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(unused_unsafe)]
            let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
            if leaf7.edx >> 24 & 1 == 0 {
                assert!(matches!(answer, AmxSupport::Unavailable(why) if why.contains("CPUID")), "{answer:?}");
            }
        }
        if let AmxSupport::Unavailable(why) = answer {
            assert!(!why.is_empty());
        }
    }

    /// The trial itself on a CPU without AMX: the tile instructions raise SIGILL in the child,
    /// and the parent survives to say so — what happens where a hypervisor traps them.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn a_trapping_tile_instruction_is_a_no_not_a_crash() {
        #[allow(unused_unsafe)]
        let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        if leaf7.edx >> 24 & 1 == 1 {
            // Tiles are listed here: the trial runs after the probe's permission request.
            let _ = amx_support();
            let answer = trial();
            assert!(answer.is_usable() || matches!(&answer, AmxSupport::Unavailable(why) if why.contains("trapped")), "{answer:?}");
            return;
        }
        let answer = trial();
        assert_eq!(answer, AmxSupport::Unavailable(format!("CPUID and the OS offer AMX but a tile instruction trapped (signal {})", libc::SIGILL)));
    }
}
