// Paged key/value cache: a pool of fixed-size blocks shared by sequences.
//
// Sections of the API:
//   storage   - the pool: n_blocks blocks of block_tokens positions, each
//               holding every layer's keys and values (F32, F16 or Q8_0 rows)
//   sequences - create / release / fork; a sequence is a block table (its
//               positions, block_tokens at a time) and its tokens
//   writing   - append() makes room for new positions (allocating blocks,
//               copying a shared last block first: copy-on-write) before the
//               forward pass writes them; truncate() drops positions
//   prefix    - full blocks are keyed by a hash of their tokens and of all
//               the tokens before them; reuse_prefix() maps a new sequence's
//               longest cached prefix onto those blocks. Blocks nobody
//               references stay cached until the pool needs them back, least
//               recently used first.
//
// Layout of block b: for each layer, block_tokens key rows then
// block_tokens value rows; a row is one position's n_kv_heads x head_dim
// values (Q8_0: head_dim / 32 blocks of 34 bytes per head).
//
// Sliding-window layers (gemma 2 / 3: a layer attends to the last `window`
// positions only) keep their keys and values in a second pool with the same
// number of blocks and a block table of their own per sequence. Once a block
// of that table lies wholly behind the window (by more than kSlidingSlack
// positions, the most a sequence may be truncated by afterwards), it is
// released: its entry becomes -1 and the block goes back to the pool (to
// the prefix cache when prefix caching is on, reclaimable like any cached
// block). A cached prefix is reused only with the sliding blocks of its
// last window.
//
// The pools are allocated once and their pages are committed as blocks are
// first written, so an unused budget costs address space, not memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace llmrt {

enum class KVType : int { F32 = 0, F16 = 1, Q8_0 = 2 };

// Where a pool lives: host memory by default, a device's when a backend
// gives its own. The cache only does pointer arithmetic on the pool and
// copies blocks through copy(); the kernels read and write it.
class PoolMemory {
 public:
  virtual ~PoolMemory() = default;
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
};
const char* kv_type_name(KVType t);
// The type of a name kv_type_name gives; std::invalid_argument otherwise.
KVType kv_type_from_name(const std::string& name);

// The pool has no room for a request (after evicting every cached block).
class KVCacheFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct KVCacheStats {
  int64_t hits = 0;           // full blocks reused from the prefix cache
  int64_t misses = 0;         // full prompt blocks looked up and not found
  int64_t tokens_reused = 0;  // positions not recomputed thanks to hits
  int64_t evictions = 0;      // cached blocks reclaimed for new data
  int64_t copies = 0;         // shared blocks copied before a write
  int blocks_total = 0;
  int blocks_in_use = 0;      // referenced by a sequence
  int blocks_cached = 0;      // unreferenced, kept for the prefix cache
  int blocks_free = 0;        // never written or reclaimed
  int sliding_blocks_in_use = 0;  // of the sliding pool (same total as the main one)
  int sliding_blocks_cached = 0;
};

class KVCache {
 public:
  // Positions of slack behind a sliding window before its blocks go.
  static constexpr int kSlidingSlack = 128;

  // mem: the pools' memory (nullptr: host memory); must outlive the cache.
  // sliding: per layer, whether it attends to the last `window` positions
  // only (empty or window 0: no layer does).
  KVCache(int n_layer, int n_kv_heads, int head_dim, int block_tokens, int n_blocks, KVType type,
          bool prefix_caching, PoolMemory* mem = nullptr, std::vector<uint8_t> sliding = {},
          int window = 0);
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  // ---- storage ----
  // Bytes of one position of one layer's keys (or values).
  static size_t position_bytes(int n_kv_heads, int head_dim, KVType type);
  int n_layer() const { return n_layer_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  int block_tokens() const { return block_tokens_; }
  int n_blocks() const { return n_blocks_; }
  KVType type() const { return type_; }
  bool prefix_caching() const { return prefix_caching_; }
  size_t row_bytes() const { return row_bytes_; }  // one position, one layer, K or V
  // One block of the pool of `layer`'s keys and values (all its layers, K and V).
  size_t block_bytes(int layer) const { return pool_of(layer).block_bytes; }
  // One block of the main pool (sliding: false) or of the sliding one.
  size_t pool_block_bytes(bool sliding) const { return pools_[sliding].block_bytes; }
  // One block of both pools: what a block of positions costs.
  size_t block_bytes() const { return pools_[0].block_bytes + pools_[1].block_bytes; }
  size_t bytes() const { return block_bytes() * (size_t)n_blocks_; }
  int capacity_tokens() const { return n_blocks_ * block_tokens_; }
  // Whether a layer attends over the window (its blocks in the sliding pool).
  bool sliding(int layer) const { return sliding_[layer] != 0; }
  bool has_sliding() const { return pools_[1].n_layer > 0; }
  int window() const { return window_; }
  // block: an id of the layer's pool (table() or sliding_table())
  uint8_t* k_block(int block, int layer) const { return at(block, layer, 0); }
  uint8_t* v_block(int block, int layer) const { return at(block, layer, 1); }

  // ---- sequences ----
  int create();
  void release(int seq);
  // A new sequence sharing all of seq's blocks (copied when either writes).
  int fork(int seq);
  bool alive(int seq) const;
  // For an empty sequence: the LoRA adapter its rows run with (0: none).
  // The adapter salts the root of the sequence's block hashes, so the prefix
  // cache only shares blocks between sequences of the same adapter.
  void set_adapter(int seq, int adapter);
  int adapter(int seq) const { return get(seq).adapter; }
  int length(int seq) const { return (int)get(seq).tokens.size(); }
  const std::vector<int32_t>& tokens(int seq) const { return get(seq).tokens; }
  // The block table of the layers without a window.
  const std::vector<int>& table(int seq) const { return get(seq).table; }
  // The sliding pool's table (empty without sliding layers): -1 for
  // released blocks.
  const std::vector<int>& sliding_table(int seq) const { return get(seq).local; }

  // ---- writing ----
  // Room for positions [length, length + n) with these tokens; the caller
  // then writes their keys and values. Throws KVCacheFull (and changes
  // nothing) when the blocks cannot be found.
  void append(int seq, const int32_t* tokens, int n);
  // Keeps the first n positions. std::invalid_argument when the sliding
  // layers have released blocks the window at n needs.
  void truncate(int seq, int n);
  // Offers the sequence's newly completed blocks to the prefix cache (call
  // after their keys and values are written).
  void commit(int seq);
  // Blocks a sequence of n_tokens more positions would need right now, and
  // how many the pool can provide (free + cached).
  int blocks_needed(int seq, int n_tokens) const;
  int blocks_available() const;

  // ---- prefix ----
  // For an empty sequence: maps the longest cached prefix of tokens[0..n)
  // onto cached blocks (whole blocks, leaving at least the last token to be
  // computed) and returns the number of positions reused.
  int reuse_prefix(int seq, const int32_t* tokens, int n);
  // Drops every cached (unreferenced) block.
  void clear_prefix_cache();
  KVCacheStats stats() const;

 private:
  struct Block {
    int ref = 0;
    bool hashed = false;  // registered in by_hash_ (its contents are final)
    uint64_t hash = 0, parent = 0;
    std::vector<int32_t> toks;  // the block's tokens, checked on every hit
    std::list<int>::iterator lru;
    bool in_lru = false;
  };
  struct Seq {
    std::vector<int> table;
    std::vector<int> local;  // the sliding pool's table (-1: released)
    int local_from = 0;      // entries before it are all released
    std::vector<int32_t> tokens;
    std::vector<uint64_t> hashes;  // chained hash of each full block
    uint64_t salt = 0;             // the chain's root
    int adapter = 0;
  };

  // The blocks of one group of layers.
  struct Pool {
    int n_layer = 0;
    size_t block_bytes = 0;
    uint8_t* data = nullptr;
    std::vector<Block> blocks;
    std::vector<int> free;  // handed out from the back
    std::list<int> lru;     // front: least recently used
    std::unordered_map<uint64_t, int> by_hash;
  };

  const Pool& pool_of(int layer) const { return pools_[sliding_[layer]]; }
  uint8_t* at(int block, int layer, int which) const {
    const Pool& p = pool_of(layer);
    return p.data + (size_t)block * p.block_bytes +
           ((size_t)slot_[layer] * 2 + which) * (size_t)block_tokens_ * row_bytes_;
  }
  const Seq& get(int seq) const;
  Seq& get(int seq);
  uint64_t block_hash(uint64_t parent, const int32_t* toks) const;
  int take_block(Pool& p);
  void unref(Pool& p, int block);
  void drop_hash(Pool& p, int block);
  // blocks a table of `have` entries over `len` positions needs for n more
  int needed(const Pool& p, const std::vector<int>& table, int len, int n) const;
  // grows a table for n more positions (copying a shared last block first)
  void grow(Pool& p, std::vector<int>& table, int len, int n);
  // registers a full block under its hash (prefix caching)
  void offer(Pool& p, int block, uint64_t hash, uint64_t parent, const int32_t* toks);
  // the cached block of a hash whose parent and tokens match, or -1
  int lookup(const Pool& p, uint64_t hash, uint64_t parent, const int32_t* toks) const;
  void take_ref(Pool& p, int block);
  void release_behind_window(Seq& s);
  int first_window_block(int n) const;
  void free_pools();
  int free_count(const Pool& p) const { return (int)p.free.size() + (int)p.lru.size(); }

  int n_layer_, n_kv_heads_, head_dim_, block_tokens_, n_blocks_;
  KVType type_;
  bool prefix_caching_;
  size_t row_bytes_;
  int window_ = 0;
  std::vector<uint8_t> sliding_;  // per layer: its pool (1: sliding)
  std::vector<int> slot_;         // per layer: its index within its pool
  PoolMemory* mem_ = nullptr;
  Pool pools_[2];                      // 0: layers without a window, 1: sliding layers
  std::unordered_map<int, Seq> seqs_;  // ids are never reused
  int next_seq_ = 0;
  KVCacheStats st_;
};

}  // namespace llmrt
