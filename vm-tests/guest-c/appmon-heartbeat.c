/* appmon-heartbeat SECONDS: an application of the Debian VM test, written against libappmon as
 * a vSphere application is written against VMware's library. Enables, heartbeats every 2 s for
 * SECONDS, reports the status, then exits without disabling: the host sees the heartbeats stop.
 * Built by scripts/test with cc against libappmon/include and the release libappmon.so. */
#include <appmon.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
   int secs = argc > 1 ? atoi(argv[1]) : 30;
   /* Line by line into the journal and the console, not at exit. */
   setvbuf(stdout, NULL, _IOLBF, 0);
   AppmonLibError rc = Appmon_Enable();
   printf("APPMON-TEST c enable rc=%d %s\n", rc, Appmon_LastErrorMessage());
   if (rc != APPMONLIB_ERROR_SUCCESS) return 1;
   time_t end = time(NULL) + secs;
   int beats = 0, failed = 0;
   while (time(NULL) < end) {
      if (Appmon_MarkActive() == APPMONLIB_ERROR_SUCCESS) {
         beats++;
      } else {
         failed++;
         printf("APPMON-TEST c markActive failed: %s\n", Appmon_LastErrorMessage());
      }
      sleep(2);
   }
   char *status = Appmon_GetAppStatus();
   printf("APPMON-TEST c done beats=%d failed=%d enabled=%d status=%s\n", beats, failed,
          Appmon_IsEnabled(), status ? status : Appmon_LastErrorMessage());
   Appmon_Free(status);
   fflush(stdout);
   return failed == 0 ? 0 : 1;
}
