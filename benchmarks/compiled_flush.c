/* A stand-in for a flush's core work as one compiled pass (benchmarks/compiled_flush.py).
 *
 * Per flush: group the trades by symbol code (a counting sort, stable), then for each symbol's
 * trades in arrival order: a z-score check against its last W prices, the session's volume and
 * price-volume sums, and one series of time bars (open, high, low, close, volume, price-volume,
 * count). All state lives in per-symbol arrays; `window` holds each symbol's last W prices,
 * oldest first. Returns how many bars the flush closed.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define W 20

int64_t flush(int64_t n, const int32_t *codes, const int64_t *ts, const double *price,
              const double *size, int64_t symbols, int64_t *counts, int64_t *order,
              double *window, int64_t *filled, double *cum_v, double *cum_pv,
              double *open, double *high, double *low, double *close, double *vol,
              double *pv, int64_t *count, int64_t *start, int64_t bar_ns, double z_limit,
              uint8_t *anomaly) {
    memset(counts, 0, sizeof(int64_t) * (size_t)symbols);
    for (int64_t i = 0; i < n; i++) counts[codes[i]]++;
    int64_t at = 0;
    for (int64_t s = 0; s < symbols; s++) {
        int64_t c = counts[s];
        counts[s] = at;
        at += c;
    }
    for (int64_t i = 0; i < n; i++) order[counts[codes[i]]++] = i;
    int64_t closed = 0;
    int64_t k = 0;
    for (int64_t s = 0; s < symbols; s++) {
        double *w = window + s * W;
        for (; k < counts[s]; k++) {
            int64_t i = order[k];
            double p = price[i], q = size[i];
            uint8_t flag = 0;
            if (filled[s] == W) {
                double sum = 0.0, squares = 0.0;
                for (int j = 0; j < W; j++) {
                    sum += w[j];
                    squares += w[j] * w[j];
                }
                double mean = sum / W, var = squares / W - mean * mean;
                flag = var > 0.0 && fabs(p - mean) > z_limit * sqrt(var);
            } else {
                filled[s]++;
            }
            anomaly[i] = flag;
            memmove(w, w + 1, sizeof(double) * (W - 1));
            w[W - 1] = p;
            cum_v[s] += q;
            cum_pv[s] += p * q;
            int64_t bucket = ts[i] - ts[i] % bar_ns;
            if (count[s] == 0 || bucket != start[s]) {
                closed += count[s] != 0;
                open[s] = high[s] = low[s] = p;
                vol[s] = pv[s] = 0.0;
                count[s] = 0;
                start[s] = bucket;
            }
            if (p > high[s]) high[s] = p;
            if (p < low[s]) low[s] = p;
            close[s] = p;
            vol[s] += q;
            pv[s] += p * q;
            count[s]++;
        }
    }
    return closed;
}
