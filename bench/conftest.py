def pytest_terminal_summary(terminalreporter):
    import bench_kernels
    if bench_kernels.RESULTS:
        terminalreporter.write_sep("-", f"kernel throughput ({bench_kernels.THREADS} threads)")
        for line in bench_kernels.RESULTS:
            terminalreporter.write_line(line)
