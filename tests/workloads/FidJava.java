// A Java program spinning under a known chain: main -> level1 -> level2 -> leafWork (kept as separate
// frames with -XX:CompileCommand=dontinline,FidJava::*). Run with -XX:+PreserveFramePointer; the JIT's
// code is named by `jcmd PID Compiler.perfmap` (/tmp/perf-PID.map). Prints "ready" once the hot loop
// has run a while. Usage: java -XX:+PreserveFramePointer FidJava.java SECONDS
public class FidJava {
    static long sink;

    static long leafWork(long x) {
        for (int i = 0; i < 4000; i++) x = x * 6364136223846793005L + 1442695040888963407L;
        return x;
    }

    static long level2(long x) { return leafWork(x) + 1; }

    static long level1(long x) { return level2(x) + 1; }

    public static void main(String[] args) {
        long until = System.nanoTime() + (long) (Double.parseDouble(args[0]) * 1e9);
        long ready = System.nanoTime() + 1_000_000_000L;
        boolean told = false;
        while (System.nanoTime() < until) {
            sink += level1(sink);
            if (!told && System.nanoTime() > ready) {
                System.out.println("ready");
                System.out.flush();
                told = true;
            }
        }
    }
}
