// podflame native unwinder: walks user stacks of code built without frame pointers with the
// .eh_frame-derived rows of profiler/unwind (COORD Interface 1), loaded into maps by
// profiler/unwind/maps.py. Included by bpf/sampler.bpf.c after its stack and count helpers.
//
// Why tail calls: every frame costs a bounded binary search over the process's mappings and one
// over the binary's rows. The verifier walks each iteration of a bounded loop, so one program can
// afford UNWIND_FRAMES_PER_PROG frames; unwind_step then tail-calls itself (the kernel allows 33 tail
// calls: 33 x 8 = 264 frames, MAX_STACK_DEPTH), with the walk's state in a per-CPU map, until the stack
// ends or the tail calls run out with frames left: the stack is then stored cut, MAX_STACK_DEPTH deep.
//
// Processes without an entry in unwind_procs (not loaded yet, or --unwind fp) keep bpf_get_stack's
// frame-pointer walk, unless their executable's table is loaded already (unwind_exe_files, keyed by the
// file the kernel execed: task->mm->exe_file): then the executable's frames are walked with it, from the
// process's first sample. At the walk's first address outside the executable's text, one bpf_find_vma (the one
// lookup an interrupt allows) finds that VMA: when its file's table is loaded too (unwind_exe_files keys every
// loaded file table), that library's frames are walked with it for the rest of the sample. Libraries the process
// mapped while the agent ran (on_mmap_unlock: the dynamic loader's text mmaps) are remembered for it, and the walk
// changes to each it crosses without a lookup; frames in any other library are stepped with frame pointers until
// the loader has written the process's mapping array. Inside a walk, code without rows (CFA_NONE: JIT code, Go, gaps) is stepped
// with its frame pointer, so mixed stacks stay as deep as before.

#ifndef UNWIND_MODE
#define UNWIND_MODE 1             // 0: frame pointers only, 1: tables where loaded, 2: own walker always
#endif
#ifndef UNWIND_ROWS
#define UNWIND_ROWS (1 << 20)     // rows of all loaded binaries (16 bytes each in the kernel)
#endif
#ifndef UNWIND_TABLES
#define UNWIND_TABLES 4096        // binaries with rows loaded at once
#endif
#ifndef UNWIND_PROCS
#define UNWIND_PROCS 4096         // processes with mapping arrays
#endif
#ifndef UNWIND_MAPPINGS
#define UNWIND_MAPPINGS 65536     // mapping slots of all processes (32 bytes each)
#endif
#ifndef UNWIND_EXE_FILES
#define UNWIND_EXE_FILES UNWIND_TABLES  // one per loaded binary at most
#endif
#ifndef UNWIND_MAPPING_STEPS
#define UNWIND_MAPPING_STEPS 10   // enough for 1023 executable mappings in one process
#endif
#ifndef UNWIND_ROW_STEPS
#define UNWIND_ROW_STEPS 21       // enough for a table of 2^20 rows
#endif
#ifndef UNWIND_FRAMES_PER_PROG
#define UNWIND_FRAMES_PER_PROG 8
#endif
#ifndef UNWIND_FIND_VMA
#define UNWIND_FIND_VMA 1         // 1: a walk without a mapping array looks its first library up (bpf_find_vma)
#endif
#ifndef UNWIND_EXE_LIBS
#define UNWIND_EXE_LIBS 4         // libraries remembered per process for its walks before the mapping array
#endif
#ifndef UNWIND_LIB_PROCS
#define UNWIND_LIB_PROCS 1024     // processes with remembered libraries (LRU: new processes' first moments)
#endif
#define SYS_MMAP 9                // x86-64
#define PROT_EXEC 4
#define MAP_FIXED 0x10
// bpf_find_vma's callback: profiler/bpfprog.py links this constant (FIND_VMA_STORE_MARK) to a callback that
// stores the VMA it is given at the context pointer (BCC 0.26 compiles a callback's address to 0)
#define FIND_VMA_STORE ((void *)0x7066766d615f6362ULL)
#define VM_EXEC 0x4               // include/linux/mm.h
#define PAGE_SHIFT 12

// cfa_type / rbp_type: mirrored in profiler/unwind/table.py
#define CFA_NONE 0
#define CFA_RSP 1
#define CFA_RBP 2
#define CFA_PLT 3
#define CFA_END 4
#define CFA_SIGNAL 5
#define CFA_UNSUPPORTED 6
#define CFA_GO_SWITCH 7           // Go's asmcgocall after its call into C on the system stack: CFA = g.stack.hi -
                                  // *(rsp + cfa_offset) + 8, g = *(rsp + cfa_offset + 8) (the goroutine's stack)
#define CFA_LEAF_REG 0x10         // 0x10 | r: CFA = register r (DWARF number) + cfa_offset, read from the sample's
                                  // registers: at the leaf frame, or above it for a caller-saved register
                                  // (CALLER_SAVED_REGS); rbp_type >> 3, when not 0, is 1 + the
                                  // register holding the return address (else it is at CFA - 8): leaf only
// DWARF rax rdx rcx rsi rdi r8-r11: registers no CFI restores, so a caller's value is the sampled one
#define CALLER_SAVED_REGS 0xf37
#define CFA_DEREF 0x80            // 0x80 | [CFA_DEREF_RBP] | k: CFA = *(rbp or rsp + cfa_offset) + 8k (DRAP realignment)
#define CFA_DEREF_RBP 0x20
#define RBP_TYPE_MASK 7
#define RBP_SAME 0
#define RBP_OFFSET 1
#define RBP_UNDEFINED 2
#define RBP_AT_RBP 3              // the caller's rbp is at this frame's rbp + rbp_offset (gcc's DRAP prologue)
#define UNWIND_NO_TABLE 0xffffffff
#define MAPPING_WANTS_TABLE 1     // unwind_mapping.flags: has CFI, table loaded once a walk needs it
#define EXE_WALK 1                // unwind_state.exe_proc
#define EXE_TRIED 2
#define EXE_VMA_TRIED 4
#define EXE_LIB 8

// unwind_stats[] slots: mirrored in profiler/unwind/maps.py
#define US_TABLES 0               // samples walked with tables
#define US_FP 1                   // samples walked by bpf_get_stack (no tables for the process)
#define US_END 2                  // walks that reached CFA_END (_start, thread start)
#define US_TRUNCATED 3            // walks cut at MAX_STACK_DEPTH or out of tail calls
#define US_READ_FAULT 4           // a return address or saved rbp could not be read
#define US_NO_MAPPING 5           // an address outside the process's known mappings (JIT code, stale maps)
#define US_UNSUPPORTED 6          // CFA_UNSUPPORTED rule met
#define US_FP_STEPS 7             // frames stepped with rbp inside a table walk (CFA_NONE or no table)
#define US_ZERO_RA 8              // walks ended by a zero return address or rbp (frame-pointer end)
#define US_TAIL_FAIL 9            // the first tail call failed: the sample fell back to bpf_get_stack
#define US_BAD_CFA 10             // a CFA that does not move up the stack: walk stopped
#define US_WANTED 11              // frames in a binary whose table is not loaded yet (asked for)
#define US_EXE 12                 // samples of a process without a mapping array walked with its executable's table
#define US_EXE_OUTSIDE 13         // frames outside the executable in such a walk (libraries: stepped with rbp)
#define US_GUESS_OUTSIDE 14       // walks ended where a step guessed in code without CFI left every mapping
#define US_REMAPPED 15            // new mappings placed over a known one (on_new_area: a library replaced)
#define US_VMA 16                 // samples of US_EXE walks that found their first library's table (bpf_find_vma)
#define US_VMA_FAIL 17            // such lookups that found no VMA (mmap lock busy: the process is mapping)
#define US_VMA_NO_TABLE 18        // such lookups whose VMA is not executable or its file's table not loaded
#define US_LIB_KNOWN 19           // such walks that changed library to one remembered for the process (unwind_exe_libs)
#define US_SLOTS 20

struct unwind_row {
    u32 pc;
    s16 cfa_offset;
    s16 rbp_offset;
    u8 cfa_type;
    u8 rbp_type;
    u16 reserved;
};

struct unwind_mapping {
    u64 start;                    // runtime [start, end)
    u64 end;
    u64 bias;                     // ELF vaddr = runtime address - bias
    u32 table;                    // index in unwind_tables, or UNWIND_NO_TABLE
    u32 flags;                    // MAPPING_WANTS_TABLE
};

struct unwind_want {
    u64 start;                    // the mapping's runtime start
    u32 tgid;
    u32 reserved;
};

struct unwind_proc {
    u32 first;                    // index of the process's first mapping in unwind_mappings
    u32 count;                    // its mappings, sorted by start
};

struct unwind_table {
    u32 first;                    // index of the first row in unwind_rows
    u32 count;
};

// A file as the kernel knows it: the superblock's device (kernel encoding, major << 20 | minor), the
// inode, and its size and modification time (a file rewritten in place keeps its inode). Userspace
// computes the same from stat() of the mapping it built the table from.
struct unwind_file_key {
    u64 ino;
    u64 size;
    u64 mtime_ns;
    u32 dev;
    u32 reserved;
};

// The text mappings of a process's libraries, for its walks before the loader writes its mapping array: placed by
// on_mmap_unlock as the dynamic loader maps each library (MAP_FIXED, PROT_EXEC: ld.so's text segments) and by a
// sample's bpf_find_vma. Keyed by the mm too: an exec keeps the tgid, not the address space.
struct unwind_libs_key {
    u64 mm;
    u32 tgid;
    u32 reserved;
};

struct unwind_libs {
    struct unwind_mapping m[UNWIND_EXE_LIBS];
    u32 next;                     // the slot the next library takes (a ring: the latest mapped stay)
    u32 reserved;
};

struct unwind_exe {
    u64 vaddr;                    // ELF vaddr of the file's lowest executable segment (where mm->start_code is)
    s64 file_vaddr;               // that segment's vaddr - its file offset: a VMA at vm_pgoff maps vaddr
                                  // vm_pgoff * 4096 + file_vaddr at vm_start
    u32 table;                    // index in unwind_tables
    u32 reserved;
};

// Member offsets of the running kernel (profiler/btf.py), written by profiler/unwind/maps.py; task_mm == 0
// turns the executable fallback off.
struct unwind_exe_config {
    u64 task_mm, mm_exe_file, mm_start_code, mm_end_code, file_inode;
    u64 inode_ino, inode_sb, inode_size, inode_mtime_sec, inode_mtime_nsec, sb_dev;
    u64 vma_start, vma_end, vma_pgoff, vma_flags, vma_file;
    u64 task_files, files_fdt, fdtable_fd;
};

// Registers as the perf event context gives them: struct pt_regs of arch/x86/include/asm/ptrace.h
// (the uapi bpf_perf_event_data starts with it).
struct unwind_pt_regs {
    u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

// struct rt_sigframe after the handler returned into __restore_rt: rsp points at the ucontext,
// whose uc_mcontext (struct sigcontext) starts at byte 40.
#define UC_MCONTEXT 40
#define SC_RBP (UC_MCONTEXT + 10 * 8)
#define SC_RSP (UC_MCONTEXT + 15 * 8)
#define SC_RIP (UC_MCONTEXT + 16 * 8)

struct unwind_state {
    struct deep_trace trace;
    struct sample_key key;
    u64 ip, sp, bp;
    u32 frames;
    u32 set;
    u32 exact_ip;                 // 1: ip is not a return address (the leaf, or after a signal frame)
    u32 guessed;                  // 1: ip was stepped to from code without CFI in a binary that has CFI
    u32 exe_proc;                 // EXE_WALK: the executable's mapping (unwind_exe_mapping) stands in for the
                                  // process's array; EXE_TRIED: looked for it already; EXE_VMA_TRIED: looked
                                  // up the first library (bpf_find_vma); EXE_LIB: found, unwind_exe_mapping[1]
    u32 past_signal;              // 1: a signal frame was crossed: regs[] are not the frames' above it
    u64 lib_ip;                   // the address an executable-only walk last looked a library up for (STEP_VMA)
    u64 hash;                     // of the frames so far
    u64 regs[16];                 // the sample's user registers by DWARF number (CFA_LEAF_REG rows)
};

BPF_HASH(unwind_procs, u32, struct unwind_proc, UNWIND_PROCS);
// mmapable: the loader writes a process's mappings into its mapping of the array, no bpf() syscall per process
BPF_F_TABLE("array", int, struct unwind_mapping, unwind_mappings, UNWIND_MAPPINGS, BPF_F_MMAPABLE);
BPF_ARRAY(unwind_tables, struct unwind_table, UNWIND_TABLES);
BPF_ARRAY(unwind_rows, struct unwind_row, UNWIND_ROWS);
BPF_PERCPU_ARRAY(unwind_stats, u64, US_SLOTS);
BPF_PERCPU_ARRAY(unwind_scratch, struct unwind_state, 1);
BPF_PROG_ARRAY(unwind_progs, 1);
BPF_ARRAY(unwind_no_proc, struct unwind_proc, 1);  // stays empty: the walk of a process without tables
// Processes where an address fell outside every known mapping (dlopen, JIT code): announced on
// new_tgids (NEW_STALE) once per drain, so the loader re-reads their maps; emptied by each drain.
BPF_HASH(unwind_stale, u32, u8, 1024);
// Mappings whose table a walk needed and did not have: userspace loads tables on demand, so a
// binary mapped everywhere but rarely run (numpy's openblas in every Python) costs no rows.
BPF_HASH(unwind_wanted, struct unwind_want, u8, 4096);
// Loaded tables by the file they were built from: a process sampled before its mapping array is written
// (its first samples: a short-lived process may have no others) is walked with its executable's table.
BPF_HASH(unwind_exe_files, struct unwind_file_key, struct unwind_exe, UNWIND_EXE_FILES);
BPF_ARRAY(unwind_exe_config, struct unwind_exe_config, 1);
// the sample's executable, as a mapping, and [1] the library its walk is in: found with bpf_find_vma, or remembered
// for the process (unwind_exe_libs)
BPF_PERCPU_ARRAY(unwind_exe_mapping, struct unwind_mapping, 2);
BPF_TABLE("lru_hash", struct unwind_libs_key, struct unwind_libs, unwind_exe_libs, UNWIND_LIB_PROCS);
BPF_PERCPU_ARRAY(unwind_no_libs, struct unwind_libs, 1);  // stays empty: a walk's libraries when none are known

static __always_inline void ustat(u32 slot) {
    u64 *n = unwind_stats.lookup(&slot);
    if (n)
        (*n)++;
}

// The mapping holding ip: the last one starting at or below it, if it ends above it. Mappings live
// in one array map and are read with lookups, not indexed in a map value: a map value indexed by the
// search's bounds makes the verifier track them exactly and explore every path (652k instructions
// for one frame), while an array lookup's key stays imprecise and the loop's states prune.
static __always_inline struct unwind_mapping *mapping_below(struct unwind_proc *proc, u64 ip) {
    u32 first = proc->first, lo = 0, hi = proc->count;
    for (int i = 0; i < UNWIND_MAPPING_STEPS; i++) {
        if (lo >= hi)
            break;
        u32 mid = (lo + hi) / 2;
        u32 index = first + mid;
        struct unwind_mapping *m = unwind_mappings.lookup(&index);
        if (!m)
            return 0;
        if (m->start <= ip)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    u32 index = first + lo - 1;
    return unwind_mappings.lookup(&index);  // the last one starting at or below ip
}

static __always_inline struct unwind_mapping *find_mapping(struct unwind_proc *proc, u64 ip) {
    struct unwind_mapping *m = mapping_below(proc, ip);
    return m && ip < m->end ? m : 0;
}

// Index in unwind_rows of the last row of `table` starting at or below pc; -1 when there is none.
static __always_inline s64 find_row(u32 table, u32 pc) {
    struct unwind_table *t = unwind_tables.lookup(&table);
    if (!t || t->count == 0)
        return -1;
    u32 first = t->first, lo = 0, hi = t->count;
    for (int i = 0; i < UNWIND_ROW_STEPS; i++) {
        if (lo >= hi)
            break;
        u32 mid = (lo + hi) / 2;
        u32 index = first + mid;
        struct unwind_row *row = unwind_rows.lookup(&index);
        if (!row)
            return -1;
        if (row->pc <= pc)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    return (s64)first + lo - 1;
}

// Whether the row after `index` (-1: before the table's first row) of `table` starts at pc + 1: the return
// address pc + 1 is then the first byte of a function whose CFI starts there, the byte before it having none.
// A call does not end where CFI begins after a gap: the address was pushed, not called from (makecontext
// pushes glibc's __start_context as the coroutine's return address). libgcc and perf stop there too.
static __always_inline int row_starts_after(u32 table, s64 index, u32 pc) {
    struct unwind_table *t = unwind_tables.lookup(&table);
    if (!t)
        return 0;
    u32 next = index < 0 ? t->first : (u32)index + 1;
    if (next < t->first || next - t->first >= t->count)
        return 0;
    struct unwind_row *row = unwind_rows.lookup(&next);
    return row && row->pc == pc + 1;
}

// The identity of `file` (a struct file *) as unwind_exe_files keys it, with probe reads; non-zero when one fails.
static __always_inline int file_identity(struct unwind_exe_config *c, u64 file, struct unwind_file_key *k) {
    u64 inode = 0, sb = 0;
    s64 sec = 0;
    u32 nsec = 0, dev = 0;
    if (bpf_probe_read_kernel(&inode, sizeof(inode), (void *)(file + c->file_inode)) || !inode)
        return -1;
    if (bpf_probe_read_kernel(&k->ino, sizeof(k->ino), (void *)(inode + c->inode_ino)) ||
        bpf_probe_read_kernel(&k->size, sizeof(k->size), (void *)(inode + c->inode_size)) ||
        bpf_probe_read_kernel(&sec, sizeof(sec), (void *)(inode + c->inode_mtime_sec)) ||
        bpf_probe_read_kernel(&nsec, sizeof(nsec), (void *)(inode + c->inode_mtime_nsec)) ||
        bpf_probe_read_kernel(&sb, sizeof(sb), (void *)(inode + c->inode_sb)) || !sb ||
        bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(sb + c->sb_dev)))
        return -1;
    k->mtime_ns = (u64)sec * 1000000000ULL + nsec;
    k->dev = dev;
    return 0;
}

// The executable's text of the sampled process, from its mm (start_code and end_code span its executable
// segments, at the load bias): read with probe reads, no lock, so it works in the sampling interrupt,
// where bpf_find_vma's mmap_read_trylock allows one lookup per interrupt (its unlock is deferred to an
// irq_work, and a second lookup finds that busy). 0 when the file has no loaded table.
static __always_inline int load_exe_mapping(void) {
    u32 zero = 0;
    struct unwind_exe_config *c = unwind_exe_config.lookup(&zero);
    if (!c || !c->task_mm)
        return -1;
    u64 task = bpf_get_current_task(), mm = 0, file = 0, start = 0, end = 0;
    struct unwind_file_key k = {};
    if (bpf_probe_read_kernel(&mm, sizeof(mm), (void *)(task + c->task_mm)) || !mm)
        return -1;
    if (bpf_probe_read_kernel(&file, sizeof(file), (void *)(mm + c->mm_exe_file)) || !file)
        return -1;
    if (bpf_probe_read_kernel(&start, sizeof(start), (void *)(mm + c->mm_start_code)) ||
        bpf_probe_read_kernel(&end, sizeof(end), (void *)(mm + c->mm_end_code)) || start >= end)
        return -1;
    if (file_identity(c, file, &k))
        return -1;
    struct unwind_exe *e = unwind_exe_files.lookup(&k);
    struct unwind_mapping *m = unwind_exe_mapping.lookup(&zero);
    if (!e || !m)
        return -1;
    m->start = start;
    m->end = end;
    m->bias = start - e->vaddr;
    m->table = e->table;
    m->flags = 0;
    return 0;
}

// The mapping of `vma` (a struct vm_area_struct *, its fields read with probe reads) when it is executable, holds
// `ip`, and its file's table is loaded (unwind_exe_files keys every loaded file table); non-zero when not.
static __always_inline int vma_mapping(struct unwind_exe_config *c, u64 vma, u64 ip, struct unwind_mapping *m) {
    u64 start = 0, end = 0, pgoff = 0, flags = 0, file = 0;
    struct unwind_file_key k = {};
    if (bpf_probe_read_kernel(&start, sizeof(start), (void *)(vma + c->vma_start)) ||
        bpf_probe_read_kernel(&end, sizeof(end), (void *)(vma + c->vma_end)) ||
        bpf_probe_read_kernel(&pgoff, sizeof(pgoff), (void *)(vma + c->vma_pgoff)) ||
        bpf_probe_read_kernel(&flags, sizeof(flags), (void *)(vma + c->vma_flags)) ||
        bpf_probe_read_kernel(&file, sizeof(file), (void *)(vma + c->vma_file)) ||
        !(flags & VM_EXEC) || !file || ip < start || ip >= end || file_identity(c, file, &k))
        return -1;
    struct unwind_exe *e = unwind_exe_files.lookup(&k);
    if (!e)
        return -1;
    m->start = start;
    m->end = end;
    m->bias = start - (pgoff << PAGE_SHIFT) - e->file_vaddr;
    m->table = e->table;
    m->flags = 0;
    return 0;
}

// The current process's key in unwind_exe_libs; non-zero when its mm cannot be read.
static __always_inline int libs_key(struct unwind_exe_config *c, struct unwind_libs_key *k) {
    u64 task = bpf_get_current_task();
    k->tgid = bpf_get_current_pid_tgid() >> 32;
    return bpf_probe_read_kernel(&k->mm, sizeof(k->mm), (void *)(task + c->task_mm)) || !k->mm;
}

// Remembers library mapping `m` for the process: in the slot of one it overlaps (the library mapped again, or
// another dlopened in its place; further overlapping slots are emptied), else in the ring's next slot.
static __always_inline void remember_lib(struct unwind_libs *libs, struct unwind_mapping *m) {
    u32 slot = libs->next % UNWIND_EXE_LIBS;
    int found = 0;
#pragma unroll
    for (int k = 0; k < UNWIND_EXE_LIBS; k++) {
        if (libs->m[k].start < m->end && m->start < libs->m[k].end) {
            if (found) {
                libs->m[k].start = libs->m[k].end = 0;
            } else {
                slot = k;
                found = 1;
            }
        }
    }
    if (!found)
        libs->next = slot + 1;
    if (slot < UNWIND_EXE_LIBS)
        __builtin_memcpy(&libs->m[slot], m, sizeof(*m));
}

// The VMA holding `ip` (outside the executable and the process's remembered libraries), found with bpf_find_vma
// (under the mmap read lock's trylock: in the sampling interrupt its release is deferred to an irq_work, so a
// sample gets this one lookup), becomes unwind_exe_mapping[1] when it is executable and its file's table is loaded,
// and is remembered for the process's next samples (in `libs` when `remember`: the process has an entry). The VMA's fields are read after
// the lookup with probe reads, as load_exe_mapping reads the mm's: the interrupt holds off the RCU grace period after
// which an unmapped VMA is freed. Non-zero (counted) when there is none.
static __always_inline int load_lib_mapping(u64 ip, struct unwind_libs *libs, int remember) {
    u32 zero = 0, one = 1;
    struct unwind_exe_config *c = unwind_exe_config.lookup(&zero);
    if (!c || !c->vma_file)
        return -1;
    u64 found = 0, vma = 0;
    void *task = (void *)bpf_get_current_task_btf();
    // the verifier types the stored VMA as a pointer, on which it allows no arithmetic with the offsets
    // (numbers from a map): read back as a number
    if (bpf_find_vma(task, ip, FIND_VMA_STORE, &found, 0) ||
        bpf_probe_read_kernel(&vma, sizeof(vma), &found) || !vma) {
        ustat(US_VMA_FAIL);
        return -1;
    }
    struct unwind_mapping *m = unwind_exe_mapping.lookup(&one);
    if (!m || vma_mapping(c, vma, ip, m)) {
        ustat(US_VMA_NO_TABLE);  // asked for by walks once the process's mapping array is written, as before
        return -1;
    }
    if (remember)
        remember_lib(libs, m);
    return 0;
}

static __always_inline struct unwind_mapping *exe_mapping(u64 ip, u32 exe_proc) {
    u32 zero = 0, one = 1;
    struct unwind_mapping *m = unwind_exe_mapping.lookup(&zero);
    if (m && m->start <= ip && ip < m->end)
        return m;
    if (!(exe_proc & EXE_LIB))
        return 0;
    m = unwind_exe_mapping.lookup(&one);
    return m && m->start <= ip && ip < m->end ? m : 0;
}

// The library remembered for the process (`libs`) holding ip becomes unwind_exe_mapping[1]; non-zero when none does.
// Here, once per program at a walk's library change, not in exe_mapping: a slot looked up per frame made the verifier
// keep states per slot and frame past its 1M instructions.
static __always_inline int remembered_lib(struct unwind_libs *libs, u64 ip) {
    u32 one = 1;
    struct unwind_mapping *m = unwind_exe_mapping.lookup(&one);
    if (!m)
        return -1;
#pragma unroll
    for (int k = 0; k < UNWIND_EXE_LIBS; k++) {
        if (libs->m[k].start <= ip && ip < libs->m[k].end) {
            __builtin_memcpy(m, &libs->m[k], sizeof(*m));
            return 0;
        }
    }
    return -1;
}

// Whether the bytes before `ra` end a call instruction (call rel32, or call r/m64 in any of its lengths):
// what a return address pushed by a call is preceded by. Random data passes ~1 time in 150.
static __always_inline int after_call(u64 ra) {
    u8 c[8];  // c[8 - k] is the byte at ra - k
    if (ra < 8 || bpf_probe_read_user(c, sizeof(c), (void *)(ra - 8)))
        return 0;
    if (c[3] == 0xe8)
        return 1;
#pragma unroll
    for (int k = 2; k <= 7; k++) {
        if (k != 5 && c[8 - k] == 0xff && ((c[9 - k] >> 3) & 7) == 2)
            return 1;
    }
    return 0;
}

// Marks a process whose mapping array may be wrong; the first mark since userspace last emptied unwind_stale (or
// re-armed the process after reading its maps) goes on the new-process ring. A walk's mark wakes the watcher
// (`wake`: BPF_RB_FORCE_WAKEUP, past any unread record): until it reads the maps, every sample that goes through
// the new library ends there (a dlopen, an exec's loader still mapping). A new mapping's mark (on_new_area) waits
// for the next wake-up (BPF_RB_NO_WAKEUP): it fires in mmap, and a wake-up per library loaded costs the watcher
// a cold start for one record. It carries the process's start time, as NEW_FIRST does: no /proc/PID/stat read.
static __always_inline void mark_stale(u32 tgid, u64 wake) {
    u8 one = 1;
    if (unwind_stale.insert(&tgid, &one) == 0) {
        struct new_process_event ev = {.tgid = tgid, .kind = NEW_STALE, .start_boottime = leader_start_boottime()};
        new_tgids.ringbuf_output(&ev, sizeof(ev), wake);
    }
}

#define STEP_MORE 0
#define STEP_DONE 1
#define STEP_EXE 2                // the leaf is outside the process's mappings: try its executable (unwind_step)
#define STEP_VMA 3                // an executable-only walk left the executable: look that VMA up (unwind_step)
#define WALK_SEED 0x9e3779b97f4a7c15ULL

// Records the current frame and moves the registers to its caller's.
static __always_inline int unwind_one(struct unwind_state *st, struct unwind_proc *proc) {
    u32 n = st->frames;
    if (n >= MAX_STACK_DEPTH) {
        ustat(US_TRUNCATED);
        return STEP_DONE;
    }
    u64 ip = st->ip, sp = st->sp, bp = st->bp;
    u8 cfa_type = CFA_NONE, rbp_type = RBP_SAME, gap = 0, no_cfi = 0;
    u64 code_start = 0, code_end = 0;  // the frame's mapping, when known
    s16 cfa_offset = 0, rbp_offset = 0;
    struct unwind_mapping *m = st->exe_proc & EXE_WALK ? exe_mapping(ip, st->exe_proc) : find_mapping(proc, ip);
    if (!m && n == 0 && proc->count && !(st->exe_proc & EXE_TRIED))
        return STEP_EXE;  // nothing of the frame changed yet: the retry walks it again
    if (!m && (st->exe_proc & EXE_WALK) && st->lib_ip != ip)
        return STEP_VMA;  // likewise: the frame is walked again with the library found, if any
    if (!m && st->guessed && proc->count && !(st->exe_proc & EXE_WALK) && !after_call(ip)) {
        // The caller of code without CFI (hand-written assembly: a context switch, a SIMD kernel) was
        // guessed from [rsp] or rbp, is in no file mapping of the process and follows no call: not a
        // return address (JIT code, which has no file, is entered by calls). The stack ends at the frame
        // without CFI, as perf's and libgcc's do.
        ustat(US_GUESS_OUTSIDE);
        return STEP_DONE;
    }
    st->trace.ip[n] = ip;
    st->frames = n + 1;
    st->hash = mix64(st->hash ^ ip);  // hashed as walked: no second pass over the frames
    if (m) {
        code_start = m->start;
        code_end = m->end;
    }
    if (!m) {
        if (st->exe_proc & EXE_WALK) {
            ustat(US_EXE_OUTSIDE);  // a library: the loader is on its way (the first sample announced it)
        } else if (proc->count) {
            ustat(US_NO_MAPPING);
            mark_stale(st->key.tgid, BPF_RB_FORCE_WAKEUP);  // announced now (dlopen)
        }
    } else if (m->table == UNWIND_NO_TABLE) {
        if (m->flags & MAPPING_WANTS_TABLE) {
            struct unwind_want want = {.start = m->start, .tgid = st->key.tgid};
            u8 one = 1;
            ustat(US_WANTED);
            if (unwind_wanted.insert(&want, &one) == 0) {  // first ask: tell the loader now
                struct new_process_event ev = {.tgid = want.tgid, .kind = NEW_ASK};
                new_tgids.ringbuf_output(&ev, sizeof(ev), BPF_RB_FORCE_WAKEUP);  // even past an unread stale mark
            }
        }
    } else {
        // A return address may be one past a call at the very end of a function (noreturn callee):
        // look its rule up at the call instruction.
        u64 pc = ip - m->bias - (st->exact_ip ? 0 : 1);
        s64 index = pc >> 32 ? -1 : find_row(m->table, (u32)pc);
        u32 i = (u32)index;
        struct unwind_row *row = index < 0 ? 0 : unwind_rows.lookup(&i);
        if (row) {
            cfa_type = row->cfa_type;
            cfa_offset = row->cfa_offset;
            rbp_type = row->rbp_type;
            rbp_offset = row->rbp_offset;
            gap = cfa_type == CFA_NONE;  // between FDEs of a binary with CFI: code written without it
        }
        no_cfi = !row || gap;
        if (no_cfi && !st->exact_ip && pc < 0xffffffffULL && row_starts_after(m->table, index, (u32)pc)) {
            // a return address pushed at a function's first byte, not by a call (a makecontext coroutine's
            // __start_context): the stack's root, as if its CFI said the return address is undefined
            ustat(US_END);
            return STEP_DONE;
        }
    }

    u64 cfa = 0, ra = 0;
    u32 ra_reg = 0;               // 1 + the register holding the return address; 0: at CFA - 8
    if ((cfa_type & 0xf0) == CFA_LEAF_REG) {
        // the context install of libgcc's unwinder (CFA in rcx), longjmp (CFA in rdi, return address in
        // rdx): the sampled frame has every register's value. A caller has a caller-saved register's: no
        // frame's CFI restores one, so it holds the sampled value (libunwind, libdw and gdb read it so), and
        // OpenSSL's aesni_gcm_encrypt keeps its CFA in rax across its calls; a callee-saved register would
        // need its callees' saves, and above a signal frame the registers are the handler's
        u32 reg = cfa_type & 15;
        ra_reg = rbp_type >> 3;
        if (n != 0 && (ra_reg || st->past_signal || !((CALLER_SAVED_REGS >> reg) & 1))) {
            ustat(US_UNSUPPORTED);
            return STEP_DONE;
        }
        cfa = st->regs[reg] + cfa_offset;
        rbp_type &= RBP_TYPE_MASK;
        if (cfa < sp || (n != 0 && cfa == sp)) {
            ustat(US_BAD_CFA);
            return STEP_DONE;
        }
    } else if (cfa_type == CFA_END) {
        ustat(US_END);
        return STEP_DONE;
    } else if (cfa_type == CFA_UNSUPPORTED) {
        ustat(US_UNSUPPORTED);
        return STEP_DONE;
    } else if (cfa_type == CFA_SIGNAL) {
        u64 regs[3] = {};
        if (bpf_probe_read_user(&regs, sizeof(regs), (void *)(sp + SC_RSP - 8))) {
            ustat(US_READ_FAULT);
            return STEP_DONE;
        }
        u64 saved_bp = 0;
        if (bpf_probe_read_user(&saved_bp, sizeof(saved_bp), (void *)(sp + SC_RBP))) {
            ustat(US_READ_FAULT);
            return STEP_DONE;
        }
        // regs[0] = rcx slot (unused), regs[1] = rsp, regs[2] = rip
        st->sp = regs[1];
        st->ip = regs[2];
        st->bp = saved_bp;
        st->exact_ip = 1;         // the interrupted instruction itself, not a return address
        st->past_signal = 1;
        st->guessed = 0;
        return st->ip ? STEP_MORE : STEP_DONE;
    } else if (cfa_type == CFA_GO_SWITCH) {
        // the goroutine's stack pointer as asmcgocall restores it: its depth below g.stack.hi (the stack may have
        // moved during a callback) and g saved on the system stack; g.stack.hi is g's second word in every Go
        u64 saved[2] = {}, hi = 0;
        if (bpf_probe_read_user(&saved, sizeof(saved), (void *)(sp + cfa_offset)) ||
            bpf_probe_read_user(&hi, sizeof(hi), (void *)(saved[1] + 8))) {
            ustat(US_READ_FAULT);
            return STEP_DONE;
        }
        cfa = hi - saved[0] + 8;
    } else if (cfa_type == CFA_RSP) {
        cfa = sp + cfa_offset;
    } else if (cfa_type == CFA_RBP) {
        cfa = bp + cfa_offset;
    } else if (cfa_type == CFA_PLT) {
        cfa = sp + 8 + ((ip & 15) >= (u64)rbp_offset ? 8 : 0);
        rbp_type = RBP_SAME;
    } else if (cfa_type & CFA_DEREF) {
        if (bpf_probe_read_user(&cfa, sizeof(cfa), (void *)((cfa_type & CFA_DEREF_RBP ? bp : sp) + cfa_offset))) {
            ustat(US_READ_FAULT);
            return STEP_DONE;
        }
        cfa += (cfa_type & 15) * 8;
    } else if (gap && st->exact_ip && !bpf_probe_read_user(&ra, sizeof(ra), (void *)sp) &&
               !(ra > sp && ra - sp < (1 << 23))) {
        // the sampled (or signal-interrupted) instruction in hand-written assembly without CFI (NASM's
        // SIMD kernels, .S files without cfi_ directives): a leaf that pushed nothing has its return address
        // at [rsp]; rbp is the caller's, or any register in code without frame pointers. A [rsp] that
        // points just above sp is a saved frame pointer: the frame-pointer rule below then
        cfa = sp + 8;
    } else {                      // CFA_NONE or no table: the frame pointer
        ustat(US_FP_STEPS);
        if (bp == 0 || (code_start <= bp && bp < code_end)) {
            // zero: the outermost frame by the ABI. Into the frame's own code: not a frame pointer but the
            // address a context switch left in rbp (boost.context's make_fcontext pushes rbp = its `finish`
            // label as a fiber's return address: PHP fibers, folly, brpc); what is above is not a frame
            ustat(US_ZERO_RA);
            return STEP_DONE;
        }
        cfa = bp + 16;
        rbp_type = RBP_OFFSET;
        rbp_offset = -16;
    }
    if (cfa <= sp && cfa_type != CFA_RBP && cfa_type != CFA_NONE && cfa_type != CFA_GO_SWITCH &&
        !(cfa_type & CFA_LEAF_REG)) {
        ustat(US_BAD_CFA);
        return STEP_DONE;
    }
    if (ra_reg) {
        ra = st->regs[(ra_reg - 1) & 15];
    } else if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8))) {
        ustat(US_READ_FAULT);
        return STEP_DONE;
    }
    if (rbp_type == RBP_OFFSET) {
        if (bpf_probe_read_user(&bp, sizeof(bp), (void *)(cfa + rbp_offset))) {
            ustat(US_READ_FAULT);
            return STEP_DONE;
        }
    } else if (rbp_type == RBP_AT_RBP) {
        if (bpf_probe_read_user(&bp, sizeof(bp), (void *)(bp + rbp_offset))) {
            ustat(US_READ_FAULT);
            return STEP_DONE;
        }
    } else if (rbp_type == RBP_UNDEFINED) {
        bp = 0;
    }
    if (ra == 0) {
        ustat(US_ZERO_RA);
        return STEP_DONE;
    }
    st->ip = ra;
    st->sp = cfa;
    st->bp = bp;
    st->exact_ip = 0;
    st->guessed = no_cfi;
    return STEP_MORE;
}

// Hashes the walked stack, stores it in the active set and counts the sample.
// A walk cut for want of tail calls stops at MAX_STACK_DEPTH frames (33 x UNWIND_FRAMES_PER_PROG).
static __always_inline void unwind_finish(struct unwind_state *st) {
    u32 frames = st->frames;
    if (frames > MAX_STACK_DEPTH)
        frames = MAX_STACK_DEPTH;
    u64 h = mix64(st->hash ^ frames);
    int err = frames == 0 ? -EFAULT : store_stack(&st->trace, frames, &h, st->set, DEEP_CHUNKS);
    st->key.user_stack = err ? 0 : h;
    st->key.user_error = err;
    note_stack_error(err, ERR_USER_EEXIST);
    if (st->set == 0)
        count_into0(&st->key);
    else
        count_into1(&st->key);
}

int unwind_step(struct bpf_perf_event_data *ctx) {
    u32 zero = 0;
    struct unwind_state *st = unwind_scratch.lookup(&zero);
    if (!st)
        return 0;
    u32 tgid = st->key.tgid;
    struct unwind_proc *proc = unwind_procs.lookup(&tgid);
    if (!proc)
        proc = unwind_no_proc.lookup(&zero);  // the executable's mapping alone, or (UNWIND_MODE 2) rbp only
    int done = !proc;
    for (int i = 0; i < UNWIND_FRAMES_PER_PROG; i++) {
        done = unwind_one(st, proc);
        if (done)
            break;
    }
    if (done == STEP_EXE) {
        // The leaf is in none of the process's mappings: it execed since they were read (an `exec`
        // entrypoint after its shell) and if its new executable's table is loaded, the walk starts again
        // with that. A JIT leaf is in neither: the walk goes on with the array. Here, not in unwind_one,
        // so the verifier walks the lookup once rather than in each of the loop's copies.
        st->exe_proc = EXE_TRIED;
        st->lib_ip = 0;
        st->frames = 0;
        st->hash = WALK_SEED;
        if (load_exe_mapping() == 0 && exe_mapping(st->ip, 0)) {
            st->exe_proc = EXE_TRIED | EXE_WALK;
            ustat(US_EXE);
        }
        done = STEP_MORE;
    } else if (done == STEP_VMA) {
        // An executable-only walk left the executable (a libc caller, or the leaf): one bpf_find_vma for the
        // sample. Here for the same reason; this program's remaining frames go to the next one (the rare walk
        // that needs all 33 x UNWIND_FRAMES_PER_PROG frames ends a few short, counted truncated).
        // A library the process is known to have mapped (remembered: on_mmap_unlock, an earlier sample's lookup)
        // is taken as it is, and the walk changes library as often as it crosses one; else this sample's one
        // lookup, if not used yet. The libraries are looked up here, not before the loop: a pointer held across
        // it (into either of two maps) doubled the verifier's states (898k of its 1M instructions).
        struct unwind_exe_config *c = unwind_exe_config.lookup(&zero);
        struct unwind_libs_key lk = {};
        struct unwind_libs *libs = 0;
        if (c && c->task_mm && !libs_key(c, &lk))
            libs = unwind_exe_libs.lookup(&lk);
        int remember = libs != 0;
        if (!libs)                // an empty entry: the process has none
            libs = unwind_no_libs.lookup(&zero);
        st->lib_ip = st->ip;
        if (libs && remembered_lib(libs, st->ip) == 0) {
            st->exe_proc |= EXE_LIB;
            ustat(US_LIB_KNOWN);
        } else if (UNWIND_FIND_VMA && libs && !(st->exe_proc & EXE_VMA_TRIED)) {
            st->exe_proc |= EXE_VMA_TRIED;
            if (load_lib_mapping(st->ip, libs, remember) == 0) {
                st->exe_proc |= EXE_LIB;
                ustat(US_VMA);
            }
        }
        done = STEP_MORE;
    }
    if (!done)
        unwind_progs.call(ctx, 0);  // returns only when out of tail calls
    if (!done)                    // a caller is left: the stack is cut at MAX_STACK_DEPTH frames
        ustat(US_TRUNCATED);
    unwind_finish(st);
    return 0;
}

// The user registers at the sample: the context's when it interrupted user mode, else the ones the
// task saved on entering the kernel (bpf_task_pt_regs). ip, sp and bp, and all sixteen by DWARF number.
static __always_inline int user_regs(struct bpf_perf_event_data *ctx, struct unwind_state *st) {
    struct unwind_pt_regs saved = {};
    struct unwind_pt_regs *regs = (struct unwind_pt_regs *)ctx;
    if ((regs->cs & 3) == 3) {
        __builtin_memcpy(&saved, regs, sizeof(saved));  // constant-offset loads from the context
    } else {
        void *task = (void *)bpf_get_current_task_btf();
        void *uregs = (void *)bpf_task_pt_regs(task);
        if (!uregs || bpf_probe_read_kernel(&saved, sizeof(saved), uregs))
            return -EFAULT;
        if ((saved.cs & 3) != 3)
            return -EFAULT;      // a kernel thread: no user stack
    }
    st->ip = saved.ip;
    st->sp = saved.sp;
    st->bp = saved.bp;
    st->regs[0] = saved.ax;
    st->regs[1] = saved.dx;
    st->regs[2] = saved.cx;
    st->regs[3] = saved.bx;
    st->regs[4] = saved.si;
    st->regs[5] = saved.di;
    st->regs[6] = saved.bp;
    st->regs[7] = saved.sp;
    st->regs[8] = saved.r8;
    st->regs[9] = saved.r9;
    st->regs[10] = saved.r10;
    st->regs[11] = saved.r11;
    st->regs[12] = saved.r12;
    st->regs[13] = saved.r13;
    st->regs[14] = saved.r14;
    st->regs[15] = saved.r15;
    return st->ip && st->sp ? 0 : -EFAULT;
}

// The per-CPU walk state for a new walk of the sample's user stack; non-zero when it cannot start.
static __always_inline int walk_setup(struct bpf_perf_event_data *ctx, struct sample_key *key, u32 set,
                                      u32 exe_proc) {
    u32 zero = 0;
    struct unwind_state *st = unwind_scratch.lookup(&zero);
    if (!st || user_regs(ctx, st))
        return -1;
    __builtin_memcpy(&st->key, key, sizeof(*key));
    st->frames = 0;
    st->hash = WALK_SEED;
    st->set = set;
    st->exact_ip = 1;
    st->guessed = 0;
    st->exe_proc = exe_proc;      // a stale flag from an earlier walk on this CPU must not carry over
    st->past_signal = 0;
    st->lib_ip = 0;
    return 0;
}

// Starts a table walk of the sample's user stack with `key` (complete but for the user stack).
// Returns only when the walk did not start: the caller then uses bpf_get_stack.
static __always_inline void native_unwind_begin(struct bpf_perf_event_data *ctx, struct sample_key *key,
                                                u32 set) {
    if (UNWIND_MODE == 0 || key->tgid == 0)
        return;
    u32 exe = 0;
    if (!unwind_procs.lookup(&key->tgid)) {
        exe = load_exe_mapping() == 0;
        if (UNWIND_MODE == 1 && !exe) {
            ustat(US_FP);
            return;
        }
    }
    if (walk_setup(ctx, key, set, exe ? EXE_WALK | EXE_TRIED : 0))
        return;
    ustat(US_TABLES);
    if (exe)
        ustat(US_EXE);
    unwind_progs.call(ctx, 0);
    ustat(US_TAIL_FAIL);          // not loaded: fall back
}

// Walks on a user stack that bpf_get_stack cut at kernel.perf_event_max_stack (FP_DEPTH) frames, from the
// sample's registers again, with tables where the process has them and its frame pointers elsewhere: the
// same frames bpf_get_stack gave, and the rest up to MAX_STACK_DEPTH. Returns only when it did not start
// (the caller keeps bpf_get_stack's frames). Not counted as a table walk.
static __always_inline void native_unwind_deeper(struct bpf_perf_event_data *ctx, struct sample_key *key,
                                                 u32 set) {
    if (key->tgid == 0)
        return;
    if (walk_setup(ctx, key, set, 0))
        return;
    unwind_progs.call(ctx, 0);
    ustat(US_TAIL_FAIL);
}

// The kernel chose an address for a new mapping (mmap without MAP_FIXED: mmap:vm_unmapped_area) of a
// process whose mapping array is loaded. Placed over a mapping of that array (a library dlclosed and
// another dlopened at its address), the array is wrong for that range and no walk can tell: every
// address in it is known. The process is marked stale as a walk marks it, announced without waking the
// watcher: it reads the mark at its next wake-up or poll timeout, after the loader's mmaps are done.
int on_new_area(struct bpf_raw_tracepoint_args *ctx) {
    u64 addr = ctx->args[0], length = 0;
    if (addr >= (u64)-4095)       // an error
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct unwind_proc *proc = unwind_procs.lookup(&tgid);
    if (!proc || !proc->count)
        return 0;
    // struct vm_unmapped_area_info starts with `unsigned long flags, length` (include/linux/mm.h)
    if (bpf_probe_read_kernel(&length, sizeof(length), (void *)(ctx->args[1] + 8)) || length == 0)
        length = 1;
    struct unwind_mapping *m = mapping_below(proc, addr + length - 1);
    if (!m || m->end <= addr)
        return 0;
    ustat(US_REMAPPED);
    mark_stale(tgid, BPF_RB_NO_WAKEUP);
    return 0;
}

// mmap_lock_released(mm, write), in the process that mapped, before its write lock is let go: a dynamic loader's
// library text (mapped MAP_FIXED with PROT_EXEC over the library's reservation: ld.so's second mmap of each library)
// of a process without a mapping array is remembered (unwind_exe_libs) when the library's table is loaded. A new
// process's first samples come before its array (the loader writes it after the first sample announces it) and
// walk with its executable's table and one bpf_find_vma a sample: this gives them every library they cross
// (exe -> libfoo -> libc's qsort -> a callback), not only the first met. The mapping is the syscall's own
// arguments (address, length, file descriptor, offset: the lock is held, no VMA lookup); its file, the
// descriptor's, through current->files with probe reads.
int on_mmap_unlock(struct bpf_raw_tracepoint_args *ctx) {
    if (!ctx->args[1])
        return 0;
    u32 zero = 0;
    struct unwind_exe_config *c = unwind_exe_config.lookup(&zero);
    if (!c || !c->fdtable_fd || !c->task_mm)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (unwind_procs.lookup(&tgid))
        return 0;                 // its mapping array is written: walks use that
    u64 task = bpf_get_current_task();
    u64 regs = (u64)bpf_task_pt_regs((void *)bpf_get_current_task_btf());
    struct unwind_pt_regs r = {};
    if (!regs || bpf_probe_read_kernel(&r, sizeof(r), (void *)regs) || r.orig_ax != SYS_MMAP ||
        !(r.dx & PROT_EXEC) || !(r.r10 & MAP_FIXED) || (r.di & 4095) || (r.r9 & 4095) || !r.si || r.r8 >> 31)
        return 0;
    u64 files = 0, fdt = 0, fds = 0, file = 0;
    struct unwind_file_key k = {};
    if (bpf_probe_read_kernel(&files, sizeof(files), (void *)(task + c->task_files)) || !files ||
        bpf_probe_read_kernel(&fdt, sizeof(fdt), (void *)(files + c->files_fdt)) || !fdt ||
        bpf_probe_read_kernel(&fds, sizeof(fds), (void *)(fdt + c->fdtable_fd)) || !fds ||
        bpf_probe_read_kernel(&file, sizeof(file), (void *)(fds + r.r8 * 8)) || !file || file_identity(c, file, &k))
        return 0;
    struct unwind_exe *e = unwind_exe_files.lookup(&k);
    if (!e)
        return 0;
    struct unwind_mapping m = {.start = r.di, .end = r.di + ((r.si + 4095) & ~4095ULL), .table = e->table};
    m.bias = r.di - r.r9 - e->file_vaddr;
    struct unwind_libs_key lk = {};
    if (libs_key(c, &lk))
        return 0;
    struct unwind_libs *libs = unwind_exe_libs.lookup(&lk);
    if (!libs) {
        struct unwind_libs empty = {};
        unwind_exe_libs.update(&lk, &empty);
        libs = unwind_exe_libs.lookup(&lk);
        if (!libs)
            return 0;
    }
    remember_lib(libs, &m);
    return 0;
}
