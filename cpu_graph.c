// The C side of engine.CPUGraph: a captured step's CPU kernels called in order by one C loop, and the slices of a
// multi-core kernel (tinygrad's THREAD option, its `core_id` argument) shared between the calling thread and a pool
// of worker threads. tinygrad 0.14 calls each kernel from Python and runs a kernel's slices one after another.
// Built by engine.py with clang (which tinygrad's CPU backend needs anyway) into a shared library for ctypes.
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#define relax() __builtin_ia32_pause()   // a spinning thread's hint to the core
#elif defined(__aarch64__)
#define relax() __asm__ volatile("yield")
#else
#define relax() ((void)0)
#endif

// A kernel is one row of the table Python fills: its function, its slice count, the position of its core_id
// argument (MAX_ARGS: none), then its arguments (buffer addresses, then variable values), unused ones zero.
#define MAX_ARGS 32
enum { FN, SLICES, CORE, ARGS, ROW = ARGS + MAX_ARGS };
#define A(i) a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]
#define T8 uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t
// Every kernel is called with MAX_ARGS 64-bit arguments: in the x86-64 and AArch64 C calling conventions the caller
// passes and removes them, so a kernel reads the ones it declares (pointers and ints, each in 64 bits) and no more.
typedef void (*kernel_fn)(T8, T8, T8, T8);

static void run_slice(const uint64_t *k, uint64_t slice) {
  uint64_t a[MAX_ARGS];
  for (int i = 0; i < MAX_ARGS; i++) a[i] = k[ARGS + i];
  if (k[CORE] < MAX_ARGS) a[k[CORE]] = slice;
  ((kernel_fn)k[FN])(A(0), A(8), A(16), A(24));
}

// The pool. `ticket` is the job's generation (high 32 bits), its slice count (16) and its next unclaimed slice (16):
// a thread claims a slice by one compare-and-swap, so a thread that wakes late cannot run a slice of a job that has
// moved on (or read a row that is gone), and the caller runs every slice itself when no worker is awake (a busy
// machine, a forked child with no workers).
static struct {
  _Alignas(64) uint64_t ticket;
  const uint64_t *job;
  _Alignas(64) uint64_t done;   // slices of the current job finished
  _Alignas(64) int sleepers, started;
  uint64_t worker_slices;       // slices the workers ran, ever (a test's evidence)
  pthread_mutex_t mu, run;
  pthread_cond_t wake;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .run = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static void claim_slices(uint64_t gen, int is_worker) {
  uint64_t t = __atomic_load_n(&P.ticket, __ATOMIC_ACQUIRE);
  while (t >> 32 == gen && (t & 0xffff) < (t >> 16 & 0xffff)) {
    if (!__atomic_compare_exchange_n(&P.ticket, &t, t + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
    // the claim succeeded, so the job is still running and its row alive (the caller waits for this slice)
    run_slice(__atomic_load_n(&P.job, __ATOMIC_ACQUIRE), t & 0xffff);
    if (is_worker) __atomic_add_fetch(&P.worker_slices, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&P.done, 1, __ATOMIC_RELEASE);
    t = __atomic_load_n(&P.ticket, __ATOMIC_ACQUIRE);
  }
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// A worker spins for a new job for up to a millisecond (a step's kernels follow each other within microseconds),
// then sleeps until the caller posts one, so an idle program keeps no core busy.
static void *worker(void *unused) {
  (void)unused;
  uint64_t seen = __atomic_load_n(&P.ticket, __ATOMIC_ACQUIRE) >> 32;
  for (;;) {
    double start = now();
    for (unsigned spins = 1; __atomic_load_n(&P.ticket, __ATOMIC_SEQ_CST) >> 32 == seen; spins++) {
      relax();
      if (spins % 256 == 0 && now() - start > 1e-3) {
        pthread_mutex_lock(&P.mu);
        __atomic_add_fetch(&P.sleepers, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&P.ticket, __ATOMIC_SEQ_CST) >> 32 == seen) pthread_cond_wait(&P.wake, &P.mu);
        __atomic_sub_fetch(&P.sleepers, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&P.mu);
      }
    }
    seen = __atomic_load_n(&P.ticket, __ATOMIC_ACQUIRE) >> 32;
    claim_slices(seen, 1);
  }
  return 0;
}

// Start `n` more worker threads (the pool only grows); returns how many there are.
int cpu_graph_workers(int n) {
  pthread_mutex_lock(&P.mu);
  for (; P.started < n; P.started++) {
    pthread_t t;
    if (pthread_create(&t, 0, worker, 0)) break;
    pthread_detach(t);
  }
  int started = P.started;
  pthread_mutex_unlock(&P.mu);
  return started;
}

// Run the table's `n` kernels in order; `spread`: share multi-slice kernels with the workers (else one thread).
void cpu_graph_run(const uint64_t *table, int n, int spread) {
  pthread_mutex_lock(&P.run);   // one step at a time: the pool has one job slot
  for (const uint64_t *k = table; k < table + (uint64_t)n * ROW; k += ROW) {
    if (k[SLICES] < 2 || k[SLICES] > 0xffff || k[CORE] >= MAX_ARGS || !spread || !P.started) {
      for (uint64_t s = 0; s < k[SLICES]; s++) run_slice(k, s);
      continue;
    }
    uint64_t gen = (__atomic_load_n(&P.ticket, __ATOMIC_RELAXED) >> 32) + 1;
    __atomic_store_n(&P.job, k, __ATOMIC_RELAXED);
    __atomic_store_n(&P.done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&P.ticket, gen << 32 | k[SLICES] << 16, __ATOMIC_SEQ_CST);   // publishes job and done
    if (__atomic_load_n(&P.sleepers, __ATOMIC_SEQ_CST)) {
      pthread_mutex_lock(&P.mu);
      pthread_cond_broadcast(&P.wake);
      pthread_mutex_unlock(&P.mu);
    }
    claim_slices(gen, 0);
    for (unsigned spins = 1; __atomic_load_n(&P.done, __ATOMIC_ACQUIRE) < k[SLICES]; spins++)
      if (spins % 4096 == 0) sched_yield(); else relax();   // a worker finishing its slice
  }
  pthread_mutex_unlock(&P.run);
}

uint64_t cpu_graph_worker_slices(void) { return __atomic_load_n(&P.worker_slices, __ATOMIC_RELAXED); }
