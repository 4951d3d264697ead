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
                 KVType type, bool prefix_caching, PoolMemory* mem)
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
  row_bytes_ = position_bytes(n_kv_heads, head_dim, type);
  block_bytes_ = (size_t)n_layer * 2 * block_tokens * row_bytes_;
  // 64-byte aligned; no fill, so pages are committed when blocks are written
  const size_t total = (bytes() + 63) / 64 * 64;
  mem_ = mem;
  data_ = static_cast<uint8_t*>(mem_ ? mem_->alloc(total) : std::aligned_alloc(64, total));
  if (!data_) throw std::bad_alloc();
  blocks_.resize(n_blocks);
  free_.reserve(n_blocks);
  // handed out from the back: block 0 first, so used memory stays compact
  for (int b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
}

KVCache::~KVCache() {
  if (mem_)
    mem_->free(data_);
  else
    std::free(data_);
}

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
  for (int b : s.table) unref(b);
  seqs_.erase(seq);
}

int KVCache::fork(int seq) {
  const int id = create();
  Seq& dst = seqs_[id];
  const Seq& src = get(seq);
  dst.table = src.table;
  dst.tokens = src.tokens;
  dst.hashes = src.hashes;
  dst.salt = src.salt;
  dst.adapter = src.adapter;
  for (int b : dst.table) ++blocks_[b].ref;
  return id;
}

void KVCache::set_adapter(int seq, int adapter) {
  Seq& s = get(seq);
  if (!s.tokens.empty()) throw std::invalid_argument("KVCache::set_adapter: sequence not empty");
  s.adapter = adapter;
  s.salt = adapter ? block_hash(0x6c6f7261ull + (uint64_t)adapter, nullptr) : 0;
}

// ---- blocks ------------------------------------------------------------------------

int KVCache::take_block() {
  int b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {  // reclaim the least recently used cached block
    b = lru_.front();
    lru_.pop_front();
    blocks_[b].in_lru = false;
    drop_hash(b);
    ++st_.evictions;
  } else {
    throw KVCacheFull("KV cache: no free block");
  }
  blocks_[b].ref = 1;
  return b;
}

void KVCache::unref(int b) {
  Block& k = blocks_[b];
  if (--k.ref > 0) return;
  if (k.hashed) {  // keep it for the prefix cache
    k.lru = lru_.insert(lru_.end(), b);
    k.in_lru = true;
  } else {
    free_.push_back(b);
  }
}

void KVCache::drop_hash(int b) {
  Block& k = blocks_[b];
  if (!k.hashed) return;
  auto it = by_hash_.find(k.hash);
  if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
  k.hashed = false;
  k.toks.clear();
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

int KVCache::blocks_needed(int seq, int n_tokens) const {
  const Seq& s = get(seq);
  const int len = (int)s.tokens.size();
  const int have = (int)s.table.size();
  const int want = (len + n_tokens + block_tokens_ - 1) / block_tokens_;
  int need = std::max(0, want - have);
  // a partly filled last block that is shared or final must be copied first
  if (n_tokens > 0 && len % block_tokens_ != 0) {
    const Block& last = blocks_[s.table.back()];
    if (last.ref > 1 || last.hashed) ++need;
  }
  return need;
}

void KVCache::append(int seq, const int32_t* tokens, int n) {
  if (n <= 0) return;
  Seq& s = get(seq);
  const int need = blocks_needed(seq, n);
  if (need > blocks_available())
    throw KVCacheFull("KV cache full: " + std::to_string(n) + " more positions need " +
                      std::to_string(need) + " blocks of " + std::to_string(block_tokens_) +
                      " tokens, and only " + std::to_string(blocks_available()) + " of " +
                      std::to_string(n_blocks_) +
                      " are free or reclaimable (the rest hold other sequences)");
  const int len = (int)s.tokens.size();
  if (len % block_tokens_ != 0) {
    const int old = s.table.back();
    if (blocks_[old].ref > 1 || blocks_[old].hashed) {  // copy-on-write
      const int b = take_block();
      uint8_t* dst = data_ + (size_t)b * block_bytes_;
      const uint8_t* src = data_ + (size_t)old * block_bytes_;
      if (mem_)
        mem_->copy(dst, src, block_bytes_);
      else
        std::memcpy(dst, src, block_bytes_);
      s.table.back() = b;
      unref(old);
      ++st_.copies;
    }
  }
  const int want = (len + n + block_tokens_ - 1) / block_tokens_;
  while ((int)s.table.size() < want) s.table.push_back(take_block());
  s.tokens.insert(s.tokens.end(), tokens, tokens + n);
}

void KVCache::truncate(int seq, int n) {
  Seq& s = get(seq);
  if (n < 0 || n > (int)s.tokens.size())
    throw std::invalid_argument("KVCache::truncate: " + std::to_string(n) + " is not within [0, " +
                                std::to_string(s.tokens.size()) + "]");
  s.tokens.resize(n);
  const int keep = (n + block_tokens_ - 1) / block_tokens_;
  while ((int)s.table.size() > keep) {
    unref(s.table.back());
    s.table.pop_back();
  }
  s.hashes.resize(std::min<size_t>(s.hashes.size(), (size_t)(n / block_tokens_)));
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
    Block& k = blocks_[s.table[i]];
    if (k.hashed || by_hash_.count(h)) continue;  // already known
    k.hashed = true;
    k.hash = h;
    k.parent = parent;
    k.toks.assign(toks, toks + block_tokens_);
    by_hash_[h] = s.table[i];
  }
}

// ---- prefix ---------------------------------------------------------------------

int KVCache::reuse_prefix(int seq, const int32_t* tokens, int n) {
  Seq& s = get(seq);
  if (!s.tokens.empty()) throw std::invalid_argument("KVCache::reuse_prefix: sequence not empty");
  if (!prefix_caching_ || n <= 1) return 0;
  const int lookup = (n - 1) / block_tokens_;  // the last token is always computed
  uint64_t parent = s.salt;
  int i = 0;
  for (; i < lookup; ++i) {
    const int32_t* toks = tokens + (size_t)i * block_tokens_;
    const uint64_t h = block_hash(parent, toks);
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    Block& k = blocks_[it->second];
    if (k.parent != parent || !std::equal(k.toks.begin(), k.toks.end(), toks)) break;
    if (k.ref++ == 0 && k.in_lru) {
      lru_.erase(k.lru);
      k.in_lru = false;
    }
    s.table.push_back(it->second);
    s.hashes.push_back(h);
    parent = h;
  }
  const int reused = i * block_tokens_;
  s.tokens.assign(tokens, tokens + reused);
  st_.hits += i;
  st_.misses += lookup - i;
  st_.tokens_reused += reused;
  return reused;
}

void KVCache::clear_prefix_cache() {
  while (!lru_.empty()) {
    const int b = lru_.front();
    lru_.pop_front();
    blocks_[b].in_lru = false;
    drop_hash(b);
    free_.push_back(b);
  }
}

KVCacheStats KVCache::stats() const {
  KVCacheStats s = st_;
  s.blocks_total = n_blocks_;
  s.blocks_free = (int)free_.size();
  s.blocks_cached = (int)lru_.size();
  s.blocks_in_use = n_blocks_ - s.blocks_free - s.blocks_cached;
  return s;
}

}  // namespace llmrt
