/* Drives libappmon as a C application does. `appmon_calls up` expects a guest agent with no host
 * connected at $APPMON_SOCKET; `appmon_calls down` expects none. Prints what failed and exits 1,
 * or prints "ok" and exits 0. */
#include <appmon.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int failures;

#define CHECK(cond, ...)                                                                     \
   do {                                                                                      \
      if (!(cond)) {                                                                         \
         fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);                   \
         fprintf(stderr, __VA_ARGS__);                                                       \
         fprintf(stderr, " (last error: %s)\n", Appmon_LastErrorMessage());                 \
         failures++;                                                                         \
      }                                                                                      \
   } while (0)

#define THREADS 4
#define BEATS 50

static void *beat(void *arg) {
   long *bad = arg;
   for (int i = 0; i < BEATS; i++) {
      if (Appmon_MarkActive() != APPMONLIB_ERROR_SUCCESS) {
         (*bad)++;
      } else if (strcmp(Appmon_LastErrorMessage(), "") != 0) {
         (*bad)++;
      }
   }
   return NULL;
}

static int up(void) {
   AppmonLibError rc;
   char *status;

   rc = Appmon_MarkActive();
   CHECK(rc == APPMONLIB_ERROR_NOT_ENABLED, "markActive before enable: %d", rc);
   CHECK(strlen(Appmon_LastErrorMessage()) > 0, "a refusal says why");

   rc = Appmon_Enable();
   CHECK(rc == APPMONLIB_ERROR_SUCCESS, "enable: %d", rc);
   CHECK(strcmp(Appmon_LastErrorMessage(), "") == 0, "no message after a success");

   /* Heartbeats from several threads at once over the one shared connection. */
   pthread_t threads[THREADS];
   long bad[THREADS] = {0};
   for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, beat, &bad[i]);
   for (int i = 0; i < THREADS; i++) {
      pthread_join(threads[i], NULL);
      CHECK(bad[i] == 0, "thread %d: %ld of %d heartbeats failed", i, bad[i], BEATS);
   }

   /* No host is connected: not enabled from the host's side, and gray. */
   CHECK(Appmon_IsEnabled() == 0, "isEnabled without a host");
   status = Appmon_GetAppStatus();
   CHECK(status != NULL && strcmp(status, "gray") == 0, "status %s", status ? status : "(null)");
   Appmon_Free(status);
   Appmon_Free(NULL);

   rc = Appmon_PostAppState("appStateBogus");
   CHECK(rc == APPMONLIB_ERROR_NOT_SUPPORTED, "unknown state: %d", rc);
   CHECK(strstr(Appmon_LastErrorMessage(), "appStateBogus") != NULL, "the message names it");
   rc = Appmon_PostAppState(NULL);
   CHECK(rc == APPMONLIB_ERROR_NOT_SUPPORTED, "NULL state: %d", rc);
   rc = Appmon_PostAppState("appStateOk");
   CHECK(rc == APPMONLIB_ERROR_SUCCESS, "appStateOk: %d", rc);

   rc = Appmon_Disable();
   CHECK(rc == APPMONLIB_ERROR_SUCCESS, "disable: %d", rc);
   rc = Appmon_MarkActive();
   CHECK(rc == APPMONLIB_ERROR_NOT_ENABLED, "markActive after disable: %d", rc);
   return failures;
}

static int down(void) {
   struct timespec t0, t1;
   clock_gettime(CLOCK_MONOTONIC, &t0);
   AppmonLibError rc = Appmon_Enable();
   CHECK(rc == APPMONLIB_ERROR_NOT_RUNNING, "enable without an agent: %d", rc);
   CHECK(strstr(Appmon_LastErrorMessage(), "not reachable") != NULL, "message: %s",
         Appmon_LastErrorMessage());
   CHECK(Appmon_MarkActive() == APPMONLIB_ERROR_NOT_RUNNING, "markActive without an agent");
   CHECK(Appmon_IsEnabled() == 0, "isEnabled without an agent");
   char *status = Appmon_GetAppStatus();
   CHECK(status == NULL, "status without an agent: %s", status);
   clock_gettime(CLOCK_MONOTONIC, &t1);
   double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
   CHECK(secs < 2.0, "four calls without an agent took %.2f s", secs);
   return failures;
}

int main(int argc, char **argv) {
   if (argc != 2) {
      fprintf(stderr, "usage: appmon_calls up|down\n");
      return 2;
   }
   int bad = strcmp(argv[1], "up") == 0 ? up() : down();
   if (bad == 0) printf("ok\n");
   return bad == 0 ? 0 : 1;
}
