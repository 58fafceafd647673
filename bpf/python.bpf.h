// CPython frames for bpf/sampler.bpf.c: on a sample of a thread of a registered CPython process, find
// the thread's PyThreadState and walk its frame chain, storing (code object, instruction, flags) per
// frame as a Python stack beside the native ones (same two map sets, same flip and drain).
//
// Why a walk of the runtime's thread list and not the thread-local `_Py_tss_tstate`: the TLS offset of
// a variable in libpython depends on the TLS block layout the loader chose (static vs dynamic TLS,
// musl vs glibc), while `_PyRuntime` is an exported symbol in every build (shared or static, 3.7+)
// and its interpreter and thread lists are what debuggers walk. A thread is matched by its
// `native_thread_id` (== the kernel tid, 3.11+) or else by `thread_id` (pthread_self(), which is the
// thread's FS base on x86_64 with glibc and musl; read from task_struct at the BTF offset userspace
// writes into py_proc.fsbase_offset). A found thread state is remembered per tid (LRU) and re-checked
// on each use, so the list is walked once per thread, not once per sample.
//
// Why the search spans samples: CPython puts each new thread state at the head of the list, so the
// main thread and every long-lived worker sit behind the threads started after them. One sample may
// look at PY_MAX_THREADS of them (the verifier's bound); a search that did not find the thread leaves
// a cursor in py_tstates and the thread's next sample carries on from there, so a thread behind 200
// others is found within 7 of its samples instead of never. A search that went through the whole
// list remembers the head it began at: until a thread state is added (a new head), a thread without
// one (C code's own threads) costs two reads per sample, not a walk.
//
// Layouts are not compiled in: userspace (profiler/pyframes.py) writes each process's offsets into
// py_procs when it detects the interpreter (profiler/python/detect.py), so one program serves every
// CPython version side by side. Names and lines are resolved in userspace from the code object
// address; nothing but pointers and one instruction value is read here.
//
// Pure logic: BCC rewrites map calls (m.lookup()) only in the main file, so the maps and the hook that
// uses them (python_stack_into) live in sampler.bpf.c. Needs mix64() and BCC's helpers from there.
// Configured by -D flags; defaults below.

#ifndef PYTHON_FRAMES
#define PYTHON_FRAMES 1           // 0: no Python maps, every sample says PY_DISABLED
#endif
#ifndef PY_MAX_DEPTH
#define PY_MAX_DEPTH 64           // Python frames kept per stack (a deeper one: its leaf-most and root-most halves)
#endif
#ifndef PY_MAX_WALK
#define PY_MAX_WALK 1024          // frames one sample follows to find a deep stack's root (CPython's default
#endif                            // recursion limit is 1000); deeper: the leaf-most PY_MAX_DEPTH are kept
#ifndef PY_MAX_THREADS
#define PY_MAX_THREADS 32         // thread states one sample looks at while searching for its thread
#endif
#ifndef PY_MAX_SEARCH
#define PY_MAX_SEARCH 16384       // thread states one search looks at in all (a list read while it changes)
#endif
#ifndef PY_PROCS_SIZE
#define PY_PROCS_SIZE 4096        // CPython processes profiled at once
#endif
#ifndef PY_STACK_MAP_SIZE
#define PY_STACK_MAP_SIZE 4096    // distinct Python stacks per set
#endif
#ifndef PY_TSTATES_SIZE
#define PY_TSTATES_SIZE 8192      // threads whose thread state is remembered
#endif

// sample_key.python_error; mirrored in profiler/sampler.py (PY_ERRORS).
#define PY_OK 0
#define PY_NOT_PYTHON 1           // the process is not a registered CPython process
#define PY_NO_THREAD_STATE 2      // no thread state of this thread (a C thread, or not found in PY_MAX_THREADS)
#define PY_READ_FAULT 3           // a read of the process's memory failed (paged out, torn); stack kept if any
#define PY_TRUNCATED 4            // frames are missing (deeper than PY_MAX_DEPTH): the gap frame says where
#define PY_STACK_MAP_FULL 5       // the Python stack map is full: frames lost, sample kept
#define PY_NO_FRAME 6             // a thread state with no current frame (outside the interpreter loop)
#define PY_DISABLED 7             // built with PYTHON_FRAMES=0

// Bits of py_frame.code above the user address space (47 bits on x86_64).
#define PY_ADDR_MASK ((1ULL << 56) - 1)
#define PY_FLAG_ENTRY_SHIFT 56    // 3.11 _PyInterpreterFrame.is_entry
#define PY_FLAG_OWNER_SHIFT 57    // 3.11+ _PyInterpreterFrame.owner (3 bits)
#define PY_FLAG_GAP_SHIFT 60      // frames were left out root-ward of this one (profiler/pyframes.py: a marker)

struct py_proc {                  // one CPython process's layout; mirrored in profiler/pyframes.py
    u64 runtime;                  // address of _PyRuntime
    u32 interpreters_head;        // offset of runtime->interpreters.head
    u32 threads_head;             // interp->threads.head
    u32 tstate_next;
    u32 tstate_thread_id;         // pthread_self()
    s32 tstate_native_thread_id;  // the kernel tid (3.11+); -1: none
    u32 tstate_frame;             // tstate->frame (3.10), ->cframe (3.11, 3.12), ->current_frame (3.13+)
    s32 cframe_current_frame;     // cframe->current_frame; -1: tstate_frame is the frame itself
    u32 frame_previous;           // f_back / previous
    u32 frame_code;               // f_code / f_executable
    u32 frame_instr;              // f_lasti / prev_instr / instr_ptr, read as 8 bytes and masked
    u32 frame_flags;              // 8 bytes holding is_entry and/or owner (any readable offset if neither)
    u8 entry_shift;               // is_entry = (flags word >> entry_shift) & entry_mask
    u8 owner_shift;               // owner = (flags word >> owner_shift) & owner_mask
    u8 entry_mask;                // 1, or 0: no is_entry in this version
    u8 owner_mask;                // 7, or 0: no owner
    u64 instr_mask;               // 0xffffffff for f_lasti (an int), ~0 for pointers
    u64 fsbase_offset;            // offsetof(struct task_struct, thread.fsbase) from the kernel's BTF, for
                                  // versions without native_thread_id; 0: unknown (their threads not found)
};
// Every per-frame read is unconditional, its meaning set by the masks: branches in the frame loop
// multiply the verifier's states (a walk with three of them cost ~145k processed instructions).

struct py_frame {
    u64 code;                     // code object address | flag bits (PY_FLAG_*)
    u64 instr;                    // the instruction field as read (pointer or f_lasti)
};

struct py_stack {
    u32 depth;                    // frames[0..depth): leaf first
    u32 reserved;
    struct py_frame frames[PY_MAX_DEPTH];
};

static __always_inline int py_read(void *dst, u32 size, u64 addr) {
    return bpf_probe_read_user(dst, size, (const void *)addr);
}

// 1: tstate is the thread whose id field (at id_offset) is `want`, 0: it is not, -1: unreadable.
static __always_inline int py_is_thread(u64 tstate, u32 id_offset, u64 want) {
    u64 id = 0;
    if (py_read(&id, sizeof(id), tstate + id_offset))
        return -1;
    return want != 0 && id == want;
}

struct py_thread {                // py_tstates' value: what is known of one thread's thread state
    u64 tstate;                   // its PyThreadState, found (re-checked on each use); 0: not known
    u64 cursor;                   // a search under way: the next thread state to look at; 0: none
    u64 head;                     // the list's head when the last search began (0: never searched)
    u32 steps;                    // thread states that search looked at so far
    u32 reserved;
};

// Finds this thread's thread state: the one `known` remembers if it still names this thread, else it
// carries on `known`'s search (or starts one from the list's head) for at most PY_MAX_THREADS thread
// states, updating `known`. Returns a PY_* code.
static __always_inline int py_find_tstate(struct py_proc *cfg, u32 tid, struct py_thread *known, u64 *out) {
    // 3.11+: native_thread_id is the tid; before: thread_id is pthread_self(), the FS base
    u32 id_offset = cfg->tstate_thread_id;
    u64 want = 0;
    if (cfg->tstate_native_thread_id >= 0) {
        id_offset = (u32)cfg->tstate_native_thread_id;
        want = tid;
    } else if (cfg->fsbase_offset) {
        u64 task = bpf_get_current_task();
        bpf_probe_read_kernel(&want, sizeof(want), (const void *)(task + cfg->fsbase_offset));
    }
    if (known->tstate && py_is_thread(known->tstate, id_offset, want) == 1) {
        *out = known->tstate;
        return PY_OK;
    }
    known->tstate = 0;
    u64 interp = 0, head = 0;
    if (py_read(&interp, sizeof(interp), cfg->runtime + cfg->interpreters_head))
        return PY_READ_FAULT;
    if (!interp)
        return PY_NO_THREAD_STATE;  // not initialized yet, or finalized
    if (py_read(&head, sizeof(head), interp + cfg->threads_head))
        return PY_READ_FAULT;
    u64 tstate = known->cursor;
    if (!tstate) {
        if (!head)
            return PY_NO_THREAD_STATE;
        // the whole list was searched from this head: only a new thread state (a new head) can be ours
        // (the head itself is checked: it may be ours at the address an older one had)
        if (head == known->head && py_is_thread(head, id_offset, want) != 1)
            return PY_NO_THREAD_STATE;
        tstate = head;
        known->head = head;
        known->steps = 0;
    }
    int err = PY_NO_THREAD_STATE;
    for (int i = 0; i < PY_MAX_THREADS; i++) {
        int mine = py_is_thread(tstate, id_offset, want);
        if (mine < 0) {
            err = PY_READ_FAULT;  // a thread state freed under the cursor: start again next time
            known->head = 0;
            tstate = 0;
            break;
        }
        if (mine) {
            known->tstate = tstate;
            known->head = 0;     // if it is ever lost, search again whatever the head
            *out = tstate;
            err = PY_OK;
            tstate = 0;
            break;
        }
        known->steps++;
        if (py_read(&tstate, sizeof(tstate), tstate + cfg->tstate_next)) {
            err = PY_READ_FAULT;
            known->head = 0;
            tstate = 0;
            break;
        }
        if (!tstate || known->steps >= PY_MAX_SEARCH) {
            tstate = 0;          // the end of the list: not there while the head was known->head
            break;
        }
    }
    known->cursor = tstate;
    return err;
}

// Reads one frame into *out (code with its flag bits, instruction) and its previous frame; 0 or -1.
static __always_inline int py_frame_at(struct py_proc *cfg, u64 frame, struct py_frame *out, u64 *previous) {
    u64 code = 0, instr = 0, flags = 0;
    // `|`, not `||`: all four reads run, one branch
    long bad = py_read(&code, sizeof(code), frame + cfg->frame_code) |
               py_read(&instr, sizeof(instr), frame + cfg->frame_instr) |
               py_read(&flags, sizeof(flags), frame + cfg->frame_flags) |
               py_read(previous, sizeof(*previous), frame + cfg->frame_previous);
    if (bad)
        return -1;
    u64 entry = (flags >> (cfg->entry_shift & 63)) & cfg->entry_mask;
    u64 owner = (flags >> (cfg->owner_shift & 63)) & cfg->owner_mask;
    out->code = (code & PY_ADDR_MASK) | ((entry & 1) << PY_FLAG_ENTRY_SHIFT) | ((owner & 7) << PY_FLAG_OWNER_SHIFT);
    out->instr = instr & cfg->instr_mask;
    return 0;
}

// Fills st leaf first and hashes its frames into *hash (never 0: 0 means "no Python stack" in
// sample_key); returns a PY_* code (st->depth frames are valid whatever it says).
//
// A stack deeper than PY_MAX_DEPTH keeps its leaf-most and root-most PY_MAX_DEPTH / 2 frames, the leaf
// half's last one flagged (PY_FLAG_GAP_SHIFT) where the others were: a deep recursion's samples then
// still start at `<module>` (its root), not at whichever recursion level the 64th frame happened to be.
// The root half is found by following `previous` alone (one read a frame past PY_MAX_DEPTH, PY_MAX_WALK
// frames at most) with the last PY_MAX_DEPTH / 2 addresses kept in `ring`, then read; the sampled thread
// is stopped, so both walks see one chain. Deeper than PY_MAX_WALK: the leaf-most PY_MAX_DEPTH frames, the last one flagged.
static __always_inline int py_walk(struct py_proc *cfg, u64 tstate, struct py_stack *st, u64 *ring, u64 *hash) {
    u64 frame = 0, half = 0;
    st->depth = 0;
    *hash = 1;
    if (py_read(&frame, sizeof(frame), tstate + cfg->tstate_frame))
        return PY_READ_FAULT;
    if (cfg->cframe_current_frame >= 0 && frame &&
        py_read(&frame, sizeof(frame), frame + (u32)cfg->cframe_current_frame))
        return PY_READ_FAULT;
    // Every exit of the loop goes through its end (no return inside): an early return per iteration and
    // per failed read would each be a path of its own through the rest of the program for the verifier.
    int err = PY_OK;
    for (int i = 0; i < PY_MAX_DEPTH && frame; i++) {
        if (i == PY_MAX_DEPTH / 2)
            half = frame;         // where the root half goes if the stack turns out deeper
        u64 previous = 0;
        if (py_frame_at(cfg, frame, &st->frames[i], &previous)) {
            err = PY_READ_FAULT;
            break;
        }
        st->depth = i + 1;
        frame = previous;
    }
    if (!err && frame) {          // deeper: the addresses of the last PY_MAX_DEPTH / 2 frames up to the root
        u64 cursor = frame;
        u32 seen = 0;
        for (int i = 0; i < PY_MAX_WALK - PY_MAX_DEPTH && cursor; i++) {
            ring[i & (PY_MAX_DEPTH / 2 - 1)] = cursor;
            seen = i + 1;
            if (py_read(&cursor, sizeof(cursor), cursor + cfg->frame_previous))
                break;            // cursor stays non-zero: as if too deep
        }
        // the root half starts PY_MAX_DEPTH / 2 frames from the root: in the ring, or among the leaf-most
        // PY_MAX_DEPTH frames already read (then from `half` on, seen frames later)
        u64 lead = cursor;
        if (!lead && seen >= PY_MAX_DEPTH / 2)
            half = ring[seen & (PY_MAX_DEPTH / 2 - 1)];
        else if (!lead)
            for (u32 i = 0; i < PY_MAX_DEPTH / 2 && i < seen; i++)
                if (py_read(&half, sizeof(half), half + cfg->frame_previous))
                    break;
        err = PY_TRUNCATED;
        u32 gap = PY_MAX_DEPTH - 1;
        if (!lead && half) {      // half is the root half's first frame
            gap = PY_MAX_DEPTH / 2 - 1;
            st->depth = PY_MAX_DEPTH / 2;
            for (int i = PY_MAX_DEPTH / 2; i < PY_MAX_DEPTH && half; i++) {
                u64 previous = 0;
                if (py_frame_at(cfg, half, &st->frames[i], &previous)) {
                    err = PY_READ_FAULT;
                    break;
                }
                st->depth = i + 1;
                half = previous;
            }
        }
        st->frames[gap & (PY_MAX_DEPTH - 1)].code |= 1ULL << PY_FLAG_GAP_SHIFT;
    }
    u64 h = 0x7f4a7c159e3779b9ULL;
    for (int i = 0; i < PY_MAX_DEPTH; i++) {
        if (i >= st->depth)
            break;
        h = mix64(mix64(h ^ st->frames[i].code) ^ st->frames[i].instr);
    }
    *hash = h ? h : 1;
    if (err)
        return err;
    return st->depth ? PY_OK : PY_NO_FRAME;
}
