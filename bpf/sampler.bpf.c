// podflame CPU sampler: runs on every cpu-clock perf event tick on every CPU.
//
// Counts samples in the kernel, keyed by (cgroup, tgid, tid, user stack, kernel stack, comm), so
// userspace only ever reads one entry per distinct stack, not one per sample.
//
// Stacks are stored by a 64-bit hash of their addresses in a BPF hash map, not with
// bpf_get_stackid(): a stack-trace map has one bucket per entry and drops a new stack whose bucket is
// taken (-EEXIST), which loses ~n/2m of n distinct stacks in m buckets (1.6% measured with 500 Python
// stacks in 16384 buckets, far more on a busy node). A hash map only fails when it is full (-ENOMEM),
// and it can be read and cleared with batch syscalls.
//
// Stacks deeper than a stacks0/1 row (STACK_HEAD = 127 frames) keep their further frames in deep0/1:
// chunks of DEEP_CHUNK frames keyed by (the stack's hash, chunk index), written before the head row, so a
// head that fills its row and has no chunk 0 ended at 127 frames, and a chunk that fills its row is
// followed by the next one. Only the few deep stacks pay for them: doubling the rows would have added
// 36 MB for every stack. MAX_STACK_DEPTH (264) is the table walker's reach (33 tail calls x 8 frames);
// a stack cut there is stored with exactly MAX_STACK_DEPTH frames, which userspace marks as cut.
//
// Two map sets (counts + stack traces, x2) are selected by control[CTL_ACTIVE_SET]: userspace flips
// the index, waits for in-flight programs to finish, then reads and clears the set no program writes
// any more (see profiler/sampler.py). Nothing is lost or counted twice across drains.
//
// Configured only through -D cflags from profiler/sampler.py; the defaults below document them.

// No kernel headers beyond the ones BCC always includes (helpers.h and uapi/linux/bpf.h): the few
// definitions needed are below. Including <uapi/linux/bpf_perf_event.h> and <linux/sched.h> for them
// made clang parse thousands of header lines and cost ~1 s of the ~1.3 s compile for identical
// bytecode. The native unwinder reads the registers from the context through its own pt_regs
// layout (bpf/native_unwind.bpf.h), so `ctx` stays opaque here.
#define TASK_COMM_LEN 16          // include/linux/sched.h
#define E2BIG 7                   // include/uapi/asm-generic/errno-base.h
#define ENOMEM 12
#define EFAULT 14
#define EEXIST 17
struct bpf_perf_event_data;       // include/uapi/linux/bpf_perf_event.h

#ifndef STACK_MAP_SIZE
#define STACK_MAP_SIZE 16384      // distinct stacks per set (user and kernel stacks share one map)
#endif
#ifndef COUNTS_MAP_SIZE
#define COUNTS_MAP_SIZE 40960     // distinct sample keys per set
#endif
#ifndef INCLUDE_IDLE
#define INCLUDE_IDLE 0            // 1: also sample the idle task (pid 0)
#endif
#ifndef TGID_FILTER_SIZE
#define TGID_FILTER_SIZE 1024
#endif
#ifndef CGROUP_FILTER_SIZE
#define CGROUP_FILTER_SIZE 4096
#endif
#ifndef CGROUP_MAX_DEPTH
#define CGROUP_MAX_DEPTH 16       // ancestor levels checked against the cgroup filter
#endif

// control[] slots; mirrored in profiler/sampler.py.
#define CTL_ACTIVE_SET 0          // 0 or 1: the map set programs write to
#define CTL_TGID_FILTER 1         // 1: only tgids in tgid_filter
#define CTL_CGROUP_FILTER 2       // 1: only cgroups in (or below) cgroup_filter
#define CTL_SLOTS 4

// errors[] slots; mirrored in profiler/sampler.py.
#define ERR_USER_EEXIST 0         // kept for get_stackid compatibility; hash-keyed stacks never collide
#define ERR_USER_ENOMEM 1         // stack map full: stack lost, sample kept
#define ERR_USER_EFAULT 2         // no user stack (normal for kernel threads)
#define ERR_USER_OTHER 3
#define ERR_KERNEL_EEXIST 4
#define ERR_KERNEL_ENOMEM 5
#define ERR_KERNEL_EFAULT 6       // no kernel stack (normal for samples taken in user mode)
#define ERR_KERNEL_OTHER 7
#define ERR_COUNTS_FULL 8         // counts map full: sample lost
#define ERR_COUNTS_OTHER 9        // counts map update failed otherwise: sample lost
#define ERR_SLOTS 10

#define STACK_HEAD 127            // frames in a stacks0/1 row (PERF_MAX_STACK_DEPTH)
#define DEEP_CHUNK 46             // frames in a deep0/1 chunk
#define DEEP_CHUNKS 3             // chunks of one stack: STACK_HEAD + 3 x 46 = 265 slots
#define MAX_STACK_DEPTH 264       // deepest stored stack; one this deep was cut (userspace marks it)
#define TRACE_SLOTS (STACK_HEAD + DEEP_CHUNK * DEEP_CHUNKS)
#ifndef FP_DEPTH
#define FP_DEPTH 127              // frames bpf_get_stack returns: kernel.perf_event_max_stack (at most MAX_STACK_DEPTH)
#endif
#ifndef DEEP_MAP_SIZE
#define DEEP_MAP_SIZE 8192        // overflow chunks per set
#endif
_Static_assert(MAX_STACK_DEPTH < TRACE_SLOTS, "a walk's frames and their terminating zero fit the chunks");
_Static_assert(FP_DEPTH <= MAX_STACK_DEPTH, "bpf_get_stack's buffer is the walk's");

struct stack_trace {              // a stacks0/1 row
    u64 ip[STACK_HEAD];           // leaf first, zero after the last frame
};

struct stack_chunk {              // a deep0/1 row: frames STACK_HEAD + index x DEEP_CHUNK on
    u64 ip[DEEP_CHUNK];
};

struct chunk_key {
    u64 stack;                    // the stack's key in the set's stack map
    u32 index;
    u32 reserved;
};

struct deep_trace {               // a stack being walked or stored: the head row's frames, then the chunks'
    u64 ip[TRACE_SLOTS];
    u32 frames;                   // walk_stack's, read back through memory (see there)
    u32 reserved;
};

struct sample_key {
    u64 cgroup_id;
    u64 user_stack;               // key in the set's stack map when user_error == 0
    u64 kernel_stack;
    u32 tgid;
    u32 pid;
    s32 user_error;               // 0 or -errno (-EFAULT: no stack, -ENOMEM: stack map full)
    s32 kernel_error;
    char comm[TASK_COMM_LEN];
    u64 python_stack;             // key in the set's py_stacks map; 0: none (see bpf/python.bpf.h)
    s32 python_error;             // PY_* of bpf/python.bpf.h (0: a complete Python stack)
};

BPF_ARRAY(control, u32, CTL_SLOTS);
// Never read by the program: updating it makes the bpf() syscall wait for an RCU grace period,
// i.e. for every program already running to finish (see Sampler._wait_for_programs).
BPF_ARRAY_OF_MAPS(grace_period, "control", 1);
BPF_PERCPU_ARRAY(errors, u64, ERR_SLOTS);
BPF_HASH(tgid_filter, u32, u8, TGID_FILTER_SIZE);
BPF_HASH(cgroup_filter, u64, u8, CGROUP_FILTER_SIZE);

BPF_PERCPU_ARRAY(scratch, struct deep_trace, 1);  // too big for the 512-byte BPF stack

// Processes seen recently, by (tgid, exec count, comm); a first sample announces the tgid on new_tgids so
// userspace reads its /proc/PID/maps right away, before a short-lived process can exit unseen. The exec count
// (task->self_exec_id, which every exec raises and threads inherit) is in the key so that a process first sampled
// between fork and exec, or one that execs itself or another program under the same comm (a python3 exec'ing
// python3, a daemon re-exec'ing its upgraded binary), announces its new image at once; the address space pointer
// would not do: exec frees the old mm_struct and the next exec's often lands at the same address. comm stays for
// kernels without the offsets (count 0). LRU: a process evicted and sampled again is announced again (harmless).
struct seen_key {
    u32 tgid;
    u32 exec_id;
    char comm[TASK_COMM_LEN];
};
BPF_TABLE("lru_hash", struct seen_key, u8, seen_tgids, SEEN_TGIDS_SIZE);
BPF_RINGBUF_OUTPUT(new_tgids, NEW_TGIDS_PAGES);

// A new_tgids record; mirrored in profiler/sampler.py (NEW_EVENT). The kind tells userspace who needs it:
// a first sample every reader of new processes, the walker's announcements (bpf/native_unwind.bpf.h) the
// unwind loader alone.
#define NEW_FIRST 0               // the first sample of (tgid, exec count, comm): a new process, or a new image after exec
#define NEW_STALE 1               // a walk met an address outside the process's mapping array (dlopen, JIT)
#define NEW_ASK 2                 // a walk asked for a table (unwind_wanted)
struct new_process_event {
    u32 tgid;
    u32 kind;
    u64 start_boottime;           // NEW_FIRST, NEW_STALE: the process's start, task->group_leader->start_boottime
                                  // (what /proc/PID/stat prints in clock ticks); 0: unknown (no offsets), or NEW_ASK
};

// task_struct member offsets of the running kernel (profiler/btf.py), written by profiler/sampler.py before
// the perf events attach; group_leader == 0: no start times in the records (userspace reads /proc/PID/stat).
struct new_process_config {
    u64 group_leader, start_boottime, self_exec_id;
};
BPF_ARRAY(new_process_config, struct new_process_config, 1);

static __always_inline u64 leader_start_boottime(void) {
    u32 zero = 0;
    struct new_process_config *c = new_process_config.lookup(&zero);
    if (!c || !c->group_leader)
        return 0;
    u64 task = bpf_get_current_task(), leader = 0, start = 0;
    if (bpf_probe_read_kernel(&leader, sizeof(leader), (void *)(task + c->group_leader)) || !leader ||
        bpf_probe_read_kernel(&start, sizeof(start), (void *)(leader + c->start_boottime)))
        return 0;
    return start;
}

// How many execs the current task's image follows (task->self_exec_id); 0 without the offsets.
static __always_inline u32 current_exec_id(void) {
    u32 zero = 0, id = 0;
    struct new_process_config *c = new_process_config.lookup(&zero);
    if (!c || !c->self_exec_id ||
        bpf_probe_read_kernel(&id, sizeof(id), (void *)(bpf_get_current_task() + c->self_exec_id)))
        return 0;
    return id;
}

BPF_HASH(counts0, struct sample_key, u64, COUNTS_MAP_SIZE);
BPF_HASH(counts1, struct sample_key, u64, COUNTS_MAP_SIZE);
BPF_HASH(stacks0, u64, struct stack_trace, STACK_MAP_SIZE);
BPF_HASH(stacks1, u64, struct stack_trace, STACK_MAP_SIZE);
BPF_HASH(deep0, struct chunk_key, struct stack_chunk, DEEP_MAP_SIZE);
BPF_HASH(deep1, struct chunk_key, struct stack_chunk, DEEP_MAP_SIZE);

static __always_inline void bump(u32 slot) {
    u64 *n = errors.lookup(&slot);
    if (n)
        (*n)++;                   // per-CPU, and perf-event programs never nest on one CPU
}

static __always_inline void note_stack_error(s32 err, u32 base) {
    if (err == 0)
        return;
    if (err == -EEXIST)
        bump(base);
    else if (err == -ENOMEM)
        bump(base + 1);
    else if (err == -EFAULT)
        bump(base + 2);
    else
        bump(base + 3);
}

static __always_inline u64 mix64(u64 x) {  // splitmix64 finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Walks one stack into the per-CPU scratch buffer and hashes it. Returns 0 or -errno, as
// bpf_get_stackid() would (-EFAULT for an empty stack: a kernel thread's user stack, a user-mode
// sample's kernel stack). The buffer passed is FP_DEPTH frames: the kernel zero-fills what it does not
// write, so a bigger one would cost a memset per sample for frames it never returns.
static __always_inline int walk_stack(struct bpf_perf_event_data *ctx, u64 flags,
                                      struct deep_trace **trace, u64 *hash, u32 *depth) {
    u32 zero = 0;
    struct deep_trace *buf = scratch.lookup(&zero);
    if (!buf)
        return -ENOMEM;
    long bytes = bpf_get_stack(ctx, buf->ip, FP_DEPTH * sizeof(u64), flags);
    if (bytes < 0)
        return bytes;
    if (bytes == 0)
        return -EFAULT;
    u32 frames = bytes / sizeof(u64);
    buf->frames = frames;
    u64 h = 0x9e3779b97f4a7c15ULL ^ frames;
    for (u32 i = 0; i < FP_DEPTH; i++) {
        if (i >= frames)
            break;
        h = mix64(h ^ buf->ip[i]);
    }
    *trace = buf;
    *hash = h;
    // Read back from the map: each of the loop's FP_DEPTH exits knows a different range of `frames`, and
    // with those ranges live the verifier would check the rest of the program once per exit (+33k
    // instructions); a value read from memory has none.
    *depth = *(volatile u32 *)&buf->frames;
    return 0;
}

// Stores a walked stack of `frames` frames under `hash` in a set: its frames past the head row first, in
// chunks, then the head row, so a reader that finds the head finds its chunks. A chunk that does not fit
// loses the stack (-ENOMEM, counted like a full stack map) rather than storing a head that hides the cut.
// Two copies because BCC resolves map names at compile time (no map pointers, no macros).
static __always_inline int store_stack0(struct deep_trace *trace, u32 frames, u64 *hash, u32 chunks) {
    if (stacks0.lookup(hash))
        return 0;
    struct chunk_key key = {.stack = *hash};
#pragma unroll
    for (u32 c = 0; c < chunks; c++) {
        if (frames <= STACK_HEAD + c * DEEP_CHUNK)
            break;
        key.index = c;
        if (deep0.update(&key, (struct stack_chunk *)&trace->ip[STACK_HEAD + c * DEEP_CHUNK]))
            return -ENOMEM;
    }
    int err = stacks0.insert(hash, (struct stack_trace *)trace);
    return err == -EEXIST ? 0 : err ? -ENOMEM : 0;  // EEXIST: another CPU stored the same stack
}

static __always_inline int store_stack1(struct deep_trace *trace, u32 frames, u64 *hash, u32 chunks) {
    if (stacks1.lookup(hash))
        return 0;
    struct chunk_key key = {.stack = *hash};
#pragma unroll
    for (u32 c = 0; c < chunks; c++) {
        if (frames <= STACK_HEAD + c * DEEP_CHUNK)
            break;
        key.index = c;
        if (deep1.update(&key, (struct stack_chunk *)&trace->ip[STACK_HEAD + c * DEEP_CHUNK]))
            return -ENOMEM;
    }
    int err = stacks1.insert(hash, (struct stack_trace *)trace);
    return err == -EEXIST ? 0 : err ? -ENOMEM : 0;
}

// Ends the stack with a zero address (readers stop there) and stores it in set `set`. `chunks` (a
// constant: the code for the chunks is left out when 0) is how many overflow chunks it may need.
static __always_inline int store_stack(struct deep_trace *trace, u32 frames, u64 *hash, u32 set, u32 chunks) {
    if (frames > MAX_STACK_DEPTH)
        frames = MAX_STACK_DEPTH;
    trace->ip[frames] = 0;
    return set == 0 ? store_stack0(trace, frames, hash, chunks) : store_stack1(trace, frames, hash, chunks);
}

// Chunks a stack of bpf_get_stack's may need: none unless kernel.perf_event_max_stack was raised past 127.
#define FP_CHUNKS (FP_DEPTH > STACK_HEAD ? DEEP_CHUNKS : 0)

// The kernel stack of the sample, stored in set `set`.
static __always_inline int stack_into(struct bpf_perf_event_data *ctx, u64 flags, u32 set, u64 *hash) {
    struct deep_trace *trace = 0;
    u32 frames = 0;
    int err = walk_stack(ctx, flags, &trace, hash, &frames);
    if (err == 0 && trace)
        err = store_stack(trace, frames, hash, set, FP_CHUNKS);
    if (err)
        *hash = 0;
    return err;
}

static __always_inline int control_on(u32 slot) {
    u32 *v = control.lookup(&slot);
    return v && *v;
}

static __always_inline int cgroup_wanted(u64 cgroup_id) {
    if (cgroup_filter.lookup(&cgroup_id))
        return 1;
    // A filter entry also selects everything below it (a pod slice selects its containers).
#pragma unroll
    for (int level = 1; level <= CGROUP_MAX_DEPTH; level++) {
        u64 ancestor = bpf_get_current_ancestor_cgroup_id(level);
        if (ancestor == 0 || ancestor == cgroup_id)
            return 0;
        if (cgroup_filter.lookup(&ancestor))
            return 1;
    }
    return 0;
}

static __always_inline void counted(int err) {
    if (err == -E2BIG || err == -ENOMEM)
        bump(ERR_COUNTS_FULL);
    else if (err)
        bump(ERR_COUNTS_OTHER);
}

// Adds one to counts[key]; a concurrent insert of the same key on another CPU is retried as an add.
static __always_inline void count_into0(struct sample_key *key) {
    u64 one = 1, *n = counts0.lookup(key);
    int err = 0;
    if (!n && (err = counts0.insert(key, &one)) == -EEXIST && (n = counts0.lookup(key)))
        err = 0;
    if (n)
        __sync_fetch_and_add(n, 1);
    counted(err);
}

static __always_inline void count_into1(struct sample_key *key) {
    u64 one = 1, *n = counts1.lookup(key);
    int err = 0;
    if (!n && (err = counts1.insert(key, &one)) == -EEXIST && (n = counts1.lookup(key)))
        err = 0;
    if (n)
        __sync_fetch_and_add(n, 1);
    counted(err);
}

// Python frames: the walker is in python.bpf.h; its maps and hook are here (BCC rewrites map calls
// only in the main file).
#include "python.bpf.h"
#if PYTHON_FRAMES
BPF_HASH(py_procs, u32, struct py_proc, PY_PROCS_SIZE);          // tgid -> layout, written by userspace
BPF_TABLE("lru_hash", u32, struct py_thread, py_tstates, PY_TSTATES_SIZE);  // tid -> its thread state or search
struct py_scratch_space {
    struct py_stack stack;
    u64 ring[PY_MAX_DEPTH / 2];   // the last frames' addresses of a stack deeper than PY_MAX_DEPTH (py_walk)
};
BPF_PERCPU_ARRAY(py_scratch, struct py_scratch_space, 1);
BPF_HASH(py_stacks0, u64, struct py_stack, PY_STACK_MAP_SIZE);
BPF_HASH(py_stacks1, u64, struct py_stack, PY_STACK_MAP_SIZE);

// Sets *stack to the stored Python stack's key (0: none) and returns a PY_* code.
static __always_inline s32 python_stack_into(u32 tgid, u32 tid, u32 set, u64 *stack) {
    *stack = 0;
    struct py_proc *cfg = py_procs.lookup(&tgid);
    if (!cfg)
        return PY_NOT_PYTHON;
    struct py_thread known = {}, *cached = py_tstates.lookup(&tid);
    if (cached)
        __builtin_memcpy(&known, cached, sizeof(known));
    u64 tstate = 0;
    int err = py_find_tstate(cfg, tid, &known, &tstate);
    if (!cached || cached->tstate != known.tstate || cached->cursor != known.cursor || cached->head != known.head)
        py_tstates.update(&tid, &known);
    if (err)
        return err;
    u32 zero = 0;
    struct py_scratch_space *space = py_scratch.lookup(&zero);
    if (!space)
        return PY_STACK_MAP_FULL;
    struct py_stack *st = &space->stack;
    u64 h = 0;
    err = py_walk(cfg, tstate, st, space->ring, &h);
    if (st->depth == 0)
        return err;
    struct py_stack *have = set == 0 ? py_stacks0.lookup(&h) : py_stacks1.lookup(&h);
    if (!have) {
        int full = set == 0 ? py_stacks0.insert(&h, st) : py_stacks1.insert(&h, st);
        if (full && full != -EEXIST)  // EEXIST: another CPU stored the same stack
            return PY_STACK_MAP_FULL;
    }
    *stack = h;
    return err;
}
#else
static __always_inline s32 python_stack_into(u32 tgid, u32 tid, u32 set, u64 *stack) {
    *stack = 0;
    return PY_DISABLED;
}
#endif

#include "native_unwind.bpf.h"

int on_sample(struct bpf_perf_event_data *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    u32 pid = (u32)pid_tgid;
    if (!INCLUDE_IDLE && pid == 0)
        return 0;
    if (control_on(CTL_TGID_FILTER) && !tgid_filter.lookup(&tgid))
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (control_on(CTL_CGROUP_FILTER) && !cgroup_wanted(cgroup_id))
        return 0;

    u32 slot = CTL_ACTIVE_SET;
    u32 *active = control.lookup(&slot);
    if (!active)
        return 0;
    u32 set = *active;            // read once: stacks and count must land in the same set

    struct sample_key key;
    __builtin_memset(&key, 0, sizeof(key));  // padding included: the key is hashed as bytes
    key.cgroup_id = cgroup_id;
    key.tgid = tgid;
    key.pid = pid;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    if (tgid) {
        struct seen_key seen;
        __builtin_memset(&seen, 0, sizeof(seen));  // padding included: the key is hashed as bytes
        seen.exec_id = current_exec_id();
        seen.tgid = tgid;
        __builtin_memcpy(seen.comm, key.comm, sizeof(seen.comm));
        if (!seen_tgids.lookup(&seen)) {
            u8 one = 1;
            seen_tgids.update(&seen, &one);
            struct new_process_event ev = {.tgid = tgid, .kind = NEW_FIRST, .start_boottime = leader_start_boottime()};
            // forced: the ring's default wakes the watcher only when it has read every earlier record, and a
            // stale mark (posted without a wake-up, to ride along with the next one) may be unread
            new_tgids.ringbuf_output(&ev, sizeof(ev), BPF_RB_FORCE_WAKEUP);
        }
    }
    key.python_error = python_stack_into(tgid, pid, set, &key.python_stack);  // before any tail call
    key.kernel_error = stack_into(ctx, 0, set, &key.kernel_stack);
    note_stack_error(key.kernel_error, ERR_KERNEL_EEXIST);

    // Everything of the key but the user stack is set here: a table walk (tail calls from here on)
    // stores the user stack and counts the sample itself, and returns only when it did not start.
    native_unwind_begin(ctx, &key, set);
    struct deep_trace *trace = 0;
    u32 frames = 0;
    int err = walk_stack(ctx, BPF_F_USER_STACK, &trace, &key.user_stack, &frames);
    // bpf_get_stack stops at kernel.perf_event_max_stack: a stack that reached it goes on with the walker
    // (frame pointers, as bpf_get_stack; tables where loaded), which returns only when it did not start
    if (err == 0 && frames >= FP_DEPTH && FP_DEPTH < MAX_STACK_DEPTH)
        native_unwind_deeper(ctx, &key, set);
    if (err == 0 && trace)
        err = store_stack(trace, frames, &key.user_stack, set, FP_CHUNKS);
    if (err)
        key.user_stack = 0;
    key.user_error = err;
    note_stack_error(key.user_error, ERR_USER_EEXIST);

    if (set == 0)
        count_into0(&key);
    else
        count_into1(&key);
    return 0;
}
