//! System call probes: static x86_64 executables, hand-assembled (so that no
//! 32-bit toolchain is needed to reach the kernel's other entry points), that
//! make one system call and exit [`SUCCEEDED`] when it worked, else with its
//! errno. A sandbox's seccomp profile is tested by what they exit with.

/// The exit code of a probe whose system call succeeded.
pub const SUCCEEDED: i32 = 100;

/// Where the executable (headers included) is loaded.
const BASE: u64 = 0x40_0000;

/// The ELF header and the one program header.
const ELF_HEADERS: usize = 64 + 56;

/// Exits [`SUCCEEDED`] if the system call's result (eax) is not an error,
/// else with its errno: `test eax,eax; js 1f; mov edi,100; jmp 2f; 1: neg eax;
/// mov edi,eax; 2: mov eax,60 (exit); syscall`.
const EXIT_WITH_RESULT: [u8; 22] =
    [0x85, 0xc0, 0x78, 0x07, 0xbf, 0x64, 0, 0, 0, 0xeb, 0x04, 0xf7, 0xd8, 0x89, 0xc7, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05];

const AF_VSOCK: u8 = 40;

/// The probes, by name, as executables:
/// - `inet`: x86_64 `socket(AF_INET, SOCK_STREAM, 0)`, the control: it must work;
/// - `vsock`: x86_64 `socket(AF_VSOCK, SOCK_STREAM, 0)`;
/// - `keyctl`: x86_64 `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)`;
/// - `i386-socket`: i386 `socket(AF_VSOCK, SOCK_STREAM, 0)` (359) through `int 0x80`;
/// - `i386-socketcall`: i386 `socketcall(SYS_SOCKET, {AF_VSOCK, SOCK_STREAM, 0})` (102);
/// - `x32-getpid`: x32 `getpid` (39 | `__X32_SYSCALL_BIT`).
pub fn probes() -> Vec<(&'static str, Vec<u8>)> {
    let with_exit = |code: &[u8]| [code, &EXIT_WITH_RESULT].concat();
    // mov eax,41; mov edi,<family>; mov esi,1; xor edx,edx; syscall.
    let socket =
        |family: u8| with_exit(&[0xb8, 41, 0, 0, 0, 0xbf, family, 0, 0, 0, 0xbe, 1, 0, 0, 0, 0x31, 0xd2, 0x0f, 0x05]);
    // mov eax,250; xor edi,edi; mov esi,-3; xor edx,edx; syscall.
    let keyctl = with_exit(&[0xb8, 250, 0, 0, 0, 0x31, 0xff, 0xbe, 0xfd, 0xff, 0xff, 0xff, 0x31, 0xd2, 0x0f, 0x05]);
    // mov eax,359; mov ebx,40; mov ecx,1; xor edx,edx; int 0x80.
    let i386_socket =
        with_exit(&[0xb8, 0x67, 0x01, 0, 0, 0xbb, AF_VSOCK, 0, 0, 0, 0xb9, 1, 0, 0, 0, 0x31, 0xd2, 0xcd, 0x80]);
    // mov eax,102; mov ebx,1; mov ecx,<args>; int 0x80; the three 32-bit
    // arguments follow the code (a low address, as int 0x80 needs).
    let head_len = 5 + 5 + 5 + 2;
    let args_at = BASE as u32 + (ELF_HEADERS + head_len + EXIT_WITH_RESULT.len()) as u32;
    let mut socketcall = vec![0xb8, 102, 0, 0, 0, 0xbb, 1, 0, 0, 0, 0xb9];
    socketcall.extend_from_slice(&args_at.to_le_bytes());
    socketcall.extend_from_slice(&[0xcd, 0x80]);
    socketcall.extend_from_slice(&EXIT_WITH_RESULT);
    for arg in [u32::from(AF_VSOCK), 1, 0] {
        socketcall.extend_from_slice(&arg.to_le_bytes());
    }
    // mov eax,0x40000027; syscall.
    let x32 = with_exit(&[0xb8, 0x27, 0, 0, 0x40, 0x0f, 0x05]);
    [
        ("inet", socket(2)),
        ("vsock", socket(AF_VSOCK)),
        ("keyctl", keyctl),
        ("i386-socket", i386_socket),
        ("i386-socketcall", socketcall),
        ("x32-getpid", x32),
    ]
    .into_iter()
    .map(|(name, code)| (name, elf(&code)))
    .collect()
}

/// A static x86_64 ELF executable whose code is `code`, loaded, with the
/// headers, at [`BASE`].
fn elf(code: &[u8]) -> Vec<u8> {
    let len = (ELF_HEADERS + code.len()) as u64;
    let mut f = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(BASE + ELF_HEADERS as u64).to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // program headers
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        f.extend_from_slice(&half.to_le_bytes());
    }
    // One PT_LOAD, read + execute, of the whole file.
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&5u32.to_le_bytes());
    for word in [0, BASE, BASE, len, len, 0x1000] {
        f.extend_from_slice(&word.to_le_bytes());
    }
    assert_eq!(f.len(), ELF_HEADERS);
    f.extend_from_slice(code);
    f
}
