#include "core/kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace llmrt {

const char* kv_type_name(KVType t) {
  switch (t) {
    case KVType::F32: return "f32";
    case KVType::F16: return "f16";
    case KVType::Q8_0: return "q8_0";
  }
  return "?";
}

KVType kv_type_from_name(const std::string& name) {
  for (KVType t : {KVType::F16, KVType::F32, KVType::Q8_0})
    if (name == kv_type_name(t)) return t;
  throw std::invalid_argument("kv_cache_dtype must be one of 'f16', 'f32', 'q8_0', got '" +
                              name + "'");
}

size_t KVCache::position_bytes(int n_kv_heads, int head_dim, KVType type) {
  const size_t kvd = (size_t)n_kv_heads * head_dim;
  switch (type) {
    case KVType::F32: return kvd * 4;
    case KVType::F16: return kvd * 2;
    case KVType::Q8_0:
      if (head_dim % 32 != 0)
        throw std::invalid_argument("a q8_0 KV cache needs head_dim to be a multiple of 32");
      return kvd / 32 * 34;
  }
  throw std::invalid_argument("KVCache: unknown type");
}

KVCache::KVCache(int n_layer, int n_kv_heads, int head_dim, int block_tokens, int n_blocks,
                 KVType type, bool prefix_caching, PoolMemory* mem, std::vector<uint8_t> sliding,
                 int window)
    : n_layer_(n_layer),
      n_kv_heads_(n_kv_heads),
      head_dim_(head_dim),
      block_tokens_(block_tokens),
      n_blocks_(n_blocks),
      type_(type),
      prefix_caching_(prefix_caching) {
  if (n_layer <= 0 || n_kv_heads <= 0 || head_dim <= 0 || n_blocks <= 0)
    throw std::invalid_argument("KVCache: sizes must be positive");
  if (block_tokens < 8 || block_tokens > 64 || block_tokens % 8 != 0)
    throw std::invalid_argument("KVCache: block_tokens must be 8, 16, 24, ... or 64");
  if (window < 0) throw std::invalid_argument("KVCache: the window must not be negative");
  if (!sliding.empty() && (int)sliding.size() != n_layer)
    throw std::invalid_argument("KVCache: one sliding flag a layer expected");
  row_bytes_ = position_bytes(n_kv_heads, head_dim, type);
  sliding_.assign(n_layer, 0);
  slot_.resize(n_layer);
  if (window > 0)
    for (int l = 0; l < (int)sliding.size(); ++l) sliding_[l] = sliding[l] ? 1 : 0;
  for (int l = 0; l < n_layer; ++l) slot_[l] = pools_[sliding_[l]].n_layer++;
  window_ = pools_[1].n_layer > 0 ? window : 0;
  mem_ = mem;
  try {
    for (int i = 0; i < 2; ++i) {
      Pool& p = pools_[i];
      p.block_bytes = (size_t)p.n_layer * 2 * block_tokens * row_bytes_;
      if (i == 1 && p.n_layer == 0) continue;  // no sliding layers: no second pool
      // 64-byte aligned (at least 64 bytes: a pool of no layers still has
      // its block ids); no fill, so pages are committed when blocks are written
      const size_t total =
          std::max<size_t>(64, (p.block_bytes * (size_t)n_blocks + 63) / 64 * 64);
      p.data = static_cast<uint8_t*>(mem_ ? mem_->alloc(total) : std::aligned_alloc(64, total));
      if (!p.data) throw std::bad_alloc();
      p.blocks.resize(n_blocks);
      p.free.reserve(n_blocks);
      // handed out from the back: block 0 first, so used memory stays compact
      for (int b = n_blocks - 1; b >= 0; --b) p.free.push_back(b);
    }
  } catch (...) {  // the destructor does not run: free what was allocated
    free_pools();
    throw;
  }
}

void KVCache::free_pools() {
  for (Pool& p : pools_) {
    if (!p.data) continue;
    if (mem_)
      mem_->free(p.data);
    else
      std::free(p.data);
    p.data = nullptr;
  }
}

KVCache::~KVCache() { free_pools(); }

// ---- sequences -------------------------------------------------------------------

const KVCache::Seq& KVCache::get(int seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw std::invalid_argument("KVCache: no sequence " + std::to_string(seq));
  return it->second;
}
KVCache::Seq& KVCache::get(int seq) {
  return const_cast<Seq&>(static_cast<const KVCache*>(this)->get(seq));
}
bool KVCache::alive(int seq) const { return seqs_.count(seq) != 0; }

int KVCache::create() {
  const int id = next_seq_++;
  seqs_.emplace(id, Seq{});
  return id;
}

void KVCache::release(int seq) {
  Seq& s = get(seq);
  for (int b : s.table) unref(pools_[0], b);
  for (int b : s.local)
    if (b >= 0) unref(pools_[1], b);
  seqs_.erase(seq);
}

int KVCache::fork(int seq) {
  const int id = create();
  Seq& dst = seqs_[id];
  dst = get(seq);
  for (int b : dst.table) ++pools_[0].blocks[b].ref;
  for (int b : dst.local)
    if (b >= 0) ++pools_[1].blocks[b].ref;
  return id;
}

void KVCache::set_adapter(int seq, int adapter) {
  Seq& s = get(seq);
  if (!s.tokens.empty()) throw std::invalid_argument("KVCache::set_adapter: sequence not empty");
  s.adapter = adapter;
  s.salt = adapter ? block_hash(0x6c6f7261ull + (uint64_t)adapter, nullptr) : 0;
}

// ---- blocks ------------------------------------------------------------------------

int KVCache::take_block(Pool& p) {
  int b;
  if (!p.free.empty()) {
    b = p.free.back();
    p.free.pop_back();
  } else if (!p.lru.empty()) {  // reclaim the least recently used cached block
    b = p.lru.front();
    p.lru.pop_front();
    p.blocks[b].in_lru = false;
    drop_hash(p, b);
    ++st_.evictions;
  } else {
    throw KVCacheFull("KV cache: no free block");
  }
  p.blocks[b].ref = 1;
  return b;
}

void KVCache::unref(Pool& p, int b) {
  Block& k = p.blocks[b];
  if (--k.ref > 0) return;
  if (k.hashed) {  // keep it for the prefix cache
    k.lru = p.lru.insert(p.lru.end(), b);
    k.in_lru = true;
  } else {
    p.free.push_back(b);
  }
}

void KVCache::drop_hash(Pool& p, int b) {
  Block& k = p.blocks[b];
  if (!k.hashed) return;
  auto it = p.by_hash.find(k.hash);
  if (it != p.by_hash.end() && it->second == b) p.by_hash.erase(it);
  k.hashed = false;
  k.toks.clear();
}

void KVCache::take_ref(Pool& p, int b) {
  Block& k = p.blocks[b];
  if (k.ref++ == 0 && k.in_lru) {
    p.lru.erase(k.lru);
    k.in_lru = false;
  }
}

uint64_t KVCache::block_hash(uint64_t parent, const int32_t* toks) const {
  // splitmix64 finalizer over the chain: parent, then each token
  auto mix = [](uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  uint64_t h = mix(parent);
  if (toks)  // no tokens: a salt
    for (int i = 0; i < block_tokens_; ++i) h = mix(h ^ (uint32_t)toks[i]);
  return h;
}

// ---- writing --------------------------------------------------------------------

int KVCache::needed(const Pool& p, const std::vector<int>& table, int len, int n) const {
  const int have = (int)table.size();
  const int want = (len + n + block_tokens_ - 1) / block_tokens_;
  int need = std::max(0, want - have);
  // a partly filled last block that is shared or final must be copied first
  if (n > 0 && len % block_tokens_ != 0) {
    const Block& last = p.blocks[table.back()];
    if (last.ref > 1 || last.hashed) ++need;
  }
  return need;
}

int KVCache::blocks_needed(int seq, int n_tokens) const {
  const Seq& s = get(seq);
  const int len = (int)s.tokens.size();
  int need = needed(pools_[0], s.table, len, n_tokens);
  if (has_sliding()) need = std::max(need, needed(pools_[1], s.local, len, n_tokens));
  return need;
}

int KVCache::blocks_available() const {
  int n = free_count(pools_[0]);
  if (has_sliding()) n = std::min(n, free_count(pools_[1]));
  return n;
}

void KVCache::grow(Pool& p, std::vector<int>& table, int len, int n) {
  if (len % block_tokens_ != 0) {
    const int old = table.back();
    if (p.blocks[old].ref > 1 || p.blocks[old].hashed) {  // copy-on-write
      const int b = take_block(p);
      uint8_t* dst = p.data + (size_t)b * p.block_bytes;
      const uint8_t* src = p.data + (size_t)old * p.block_bytes;
      if (p.block_bytes) {
        if (mem_)
          mem_->copy(dst, src, p.block_bytes);
        else
          std::memcpy(dst, src, p.block_bytes);
      }
      table.back() = b;
      unref(p, old);
      ++st_.copies;
    }
  }
  const int want = (len + n + block_tokens_ - 1) / block_tokens_;
  while ((int)table.size() < want) table.push_back(take_block(p));
}

void KVCache::append(int seq, const int32_t* tokens, int n) {
  if (n <= 0) return;
  Seq& s = get(seq);
  const int len = (int)s.tokens.size();
  for (int i = 0; i < (has_sliding() ? 2 : 1); ++i) {
    const int need = needed(pools_[i], i ? s.local : s.table, len, n);
    const int have = free_count(pools_[i]);
    if (need > have)
      throw KVCacheFull("KV cache full: " + std::to_string(n) + " more positions need " +
                        std::to_string(need) + " blocks of " + std::to_string(block_tokens_) +
                        " tokens, and only " + std::to_string(have) + " of " +
                        std::to_string(n_blocks_) +
                        " are free or reclaimable (the rest hold other sequences)");
  }
  grow(pools_[0], s.table, len, n);
  if (has_sliding()) grow(pools_[1], s.local, len, n);
  s.tokens.insert(s.tokens.end(), tokens, tokens + n);
}

void KVCache::truncate(int seq, int n) {
  Seq& s = get(seq);
  if (n < 0 || n > (int)s.tokens.size())
    throw std::invalid_argument("KVCache::truncate: " + std::to_string(n) + " is not within [0, " +
                                std::to_string(s.tokens.size()) + "]");
  const int keep = (n + block_tokens_ - 1) / block_tokens_;
  if (has_sliding() && n > 0) {  // the window before position n must still be there
    const int lo = first_window_block(n);
    for (int j = lo; j < keep; ++j)
      if (s.local[j] < 0)
        throw std::invalid_argument(
            "KVCache::truncate: the sliding-window layers no longer hold the positions before " +
            std::to_string(n) + " (released once more than " + std::to_string(kSlidingSlack) +
            " positions behind the window)");
  }
  s.tokens.resize(n);
  while ((int)s.table.size() > keep) {
    unref(pools_[0], s.table.back());
    s.table.pop_back();
  }
  while ((int)s.local.size() > keep) {
    if (s.local.back() >= 0) unref(pools_[1], s.local.back());
    s.local.pop_back();
  }
  s.local_from = std::min(s.local_from, keep);
  s.hashes.resize(std::min<size_t>(s.hashes.size(), (size_t)(n / block_tokens_)));
}

void KVCache::offer(Pool& p, int block, uint64_t hash, uint64_t parent, const int32_t* toks) {
  Block& k = p.blocks[block];
  if (k.hashed || p.by_hash.count(hash)) return;  // already known
  k.hashed = true;
  k.hash = hash;
  k.parent = parent;
  k.toks.assign(toks, toks + block_tokens_);
  p.by_hash[hash] = block;
}

void KVCache::commit(int seq) {
  Seq& s = get(seq);
  const int full = (int)s.tokens.size() / block_tokens_;
  while ((int)s.hashes.size() < full) {
    const int i = (int)s.hashes.size();
    const uint64_t parent = i ? s.hashes[i - 1] : s.salt;
    const int32_t* toks = s.tokens.data() + (size_t)i * block_tokens_;
    const uint64_t h = block_hash(parent, toks);
    s.hashes.push_back(h);
    if (!prefix_caching_) continue;
    offer(pools_[0], s.table[i], h, parent, toks);
    if (has_sliding() && s.local[i] >= 0) offer(pools_[1], s.local[i], h, parent, toks);
  }
  if (has_sliding()) release_behind_window(s);
}

// The sliding pool's blocks wholly behind the window by more than the slack.
void KVCache::release_behind_window(Seq& s) {
  const int64_t behind = (int64_t)s.tokens.size() - window_ - kSlidingSlack;
  if (behind <= 0) return;
  const int end = (int)std::min<int64_t>((int64_t)s.local.size(), behind / block_tokens_);
  for (; s.local_from < end; ++s.local_from) {
    int& b = s.local[s.local_from];
    if (b >= 0) unref(pools_[1], b);
    b = -1;
  }
}

// ---- prefix ---------------------------------------------------------------------

// The first block a token at position n attends to in a sliding layer: keys
// from n - window + 1 on.
int KVCache::first_window_block(int n) const {
  return (int)(std::max<int64_t>(0, (int64_t)n - window_ + 1) / block_tokens_);
}

int KVCache::lookup(const Pool& p, uint64_t hash, uint64_t parent, const int32_t* toks) const {
  auto it = p.by_hash.find(hash);
  if (it == p.by_hash.end()) return -1;
  const Block& k = p.blocks[it->second];
  if (k.parent != parent || !std::equal(k.toks.begin(), k.toks.end(), toks)) return -1;
  return it->second;
}

int KVCache::reuse_prefix(int seq, const int32_t* tokens, int n) {
  Seq& s = get(seq);
  if (!s.tokens.empty()) throw std::invalid_argument("KVCache::reuse_prefix: sequence not empty");
  if (!prefix_caching_ || n <= 1) return 0;
  const int bt = block_tokens_;
  const int want = (n - 1) / bt;  // the last token is always computed
  std::vector<int> main;
  std::vector<uint64_t> hashes;
  uint64_t parent = s.salt;
  for (int i = 0; i < want; ++i) {
    const int32_t* toks = tokens + (size_t)i * bt;
    const uint64_t h = block_hash(parent, toks);
    const int b = lookup(pools_[0], h, parent, toks);
    if (b < 0) break;
    main.push_back(b);
    hashes.push_back(h);
    parent = h;
  }
  int found = (int)main.size();
  // with sliding layers, a prefix counts only with its last window's blocks
  // in the sliding pool
  std::vector<int> local;
  if (has_sliding()) {
    for (; found > 0; --found) {
      const int lo = first_window_block(found * bt);
      local.assign(found, -1);
      bool ok = true;
      for (int j = lo; j < found && ok; ++j) {
        local[j] = lookup(pools_[1], hashes[j], j ? hashes[j - 1] : s.salt, tokens + (size_t)j * bt);
        ok = local[j] >= 0;
      }
      if (ok) break;
    }
    local.resize(found);
    s.local_from = first_window_block(found * bt);
  }
  for (int i = 0; i < found; ++i) take_ref(pools_[0], main[i]);
  for (int b : local)
    if (b >= 0) take_ref(pools_[1], b);
  s.table.assign(main.begin(), main.begin() + found);
  s.local = local;
  s.hashes.assign(hashes.begin(), hashes.begin() + found);
  const int reused = found * bt;
  s.tokens.assign(tokens, tokens + reused);
  st_.hits += found;
  st_.misses += want - found;
  st_.tokens_reused += reused;
  return reused;
}

void KVCache::clear_prefix_cache() {
  for (Pool& p : pools_)
    while (!p.lru.empty()) {
      const int b = p.lru.front();
      p.lru.pop_front();
      p.blocks[b].in_lru = false;
      drop_hash(p, b);
      p.free.push_back(b);
    }
}

KVCacheStats KVCache::stats() const {
  KVCacheStats s = st_;
  s.blocks_total = n_blocks_;
  s.blocks_free = (int)pools_[0].free.size();
  s.blocks_cached = (int)pools_[0].lru.size();
  s.blocks_in_use = n_blocks_ - s.blocks_free - s.blocks_cached;
  if (has_sliding()) {
    s.sliding_blocks_cached = (int)pools_[1].lru.size();
    s.sliding_blocks_in_use = n_blocks_ - (int)pools_[1].free.size() - s.sliding_blocks_cached;
  }
  return s;
}

}  // namespace llmrt
