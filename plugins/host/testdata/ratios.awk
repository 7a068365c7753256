# Summarises `go test -bench BenchmarkTransports` output: the median of
# each transport's runs, and its ratio to the built-in tcp (throughput:
# plugin/built-in, higher is better; ping-pong: built-in/plugin, so that
# 1.00x is as fast and lower is slower).
/^BenchmarkTransports\// {
	split($1, name, "/")
	t = name[2]; m = name[3]; sub(/-[0-9]+$/, "", m)
	v = (m == "Throughput") ? $(NF-1) : $3
	n[t, m]++
	vals[t, m, n[t, m]] = v + 0
	if (!(t in seen)) { seen[t] = 1; order[++count] = t }
}
function median(t, m,    k, i, j, tmp, a) {
	k = n[t, m]
	for (i = 1; i <= k; i++) a[i] = vals[t, m, i]
	for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { tmp = a[j]; a[j] = a[j-1]; a[j-1] = tmp }
	return (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2
}
END {
	if (!count) { print "no benchmark results"; exit 1 }
	bt = median("builtin-tcp", "Throughput"); bp = median("builtin-tcp", "PingPong4KiB")
	printf "%-16s %24s %24s\n", "transport", "1 MiB writes (median)", "4 KiB ping-pong (median)"
	for (i = 1; i <= count; i++) {
		t = order[i]; tp = median(t, "Throughput"); pp = median(t, "PingPong4KiB")
		printf "%-16s %10.0f MB/s (%.2fx) %12.1f µs (%.2fx)\n", t, tp, tp / bt, pp / 1000, bp / pp
	}
}
