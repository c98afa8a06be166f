// OpenBLAS SGEMM GFLOP/s for one shape and transpose case (row-major, C = op(A)·op(B),
// alpha 1, beta 0): the anchor of scripts/bench.py gemm for each of Loom's transpose cases
// (../shared/bench/sgemm_openblas.c times nn only). tn is Aᵀ·B with A stored k×m, nt A·Bᵀ
// with B stored n×k, as `loom bench gemm --trans` multiplies. Prints one JSON line: the
// median of 5 timed samples of ≥ 0.2 s each, and their min and max.
// Build: gcc -O2 sgemm_openblas_trans.c -o sgemm_openblas_trans -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas
// Usage: sgemm_openblas_trans THREADS M N K nn|tn|nt|tt
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
extern void openblas_set_num_threads(int);
extern char* openblas_get_corename(void);
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  if(argc<6){fprintf(stderr,"usage: %s THREADS M N K nn|tn|nt\n",argv[0]);return 2;}
  int th=atoi(argv[1]),M=atoi(argv[2]),N=atoi(argv[3]),K=atoi(argv[4]); const char*tr=argv[5];
  int ta=tr[0]=='t', tb=tr[1]=='t';
  openblas_set_num_threads(th);
  float*A=aligned_alloc(64,sizeof(float)*M*K),*B=aligned_alloc(64,sizeof(float)*K*N),*C=aligned_alloc(64,sizeof(float)*M*N);
  for(long i=0;i<(long)M*K;i++)A[i]=(float)((i*7)%13)/13.f-0.5f;
  for(long i=0;i<(long)K*N;i++)B[i]=(float)((i*5)%11)/11.f-0.5f;
  int lda=ta?M:K, ldb=tb?K:N;
  enum CBLAS_TRANSPOSE TA=ta?CblasTrans:CblasNoTrans, TB=tb?CblasTrans:CblasNoTrans;
  double fl=2.0*M*N*K;
  cblas_sgemm(CblasRowMajor,TA,TB,M,N,K,1.f,A,lda,B,ldb,0.f,C,N);
  double t0=now(); cblas_sgemm(CblasRowMajor,TA,TB,M,N,K,1.f,A,lda,B,ldb,0.f,C,N); double one=now()-t0;
  int reps=(int)(0.2/one)+1; int R=5; double g[5];
  for(int r=0;r<R;r++){ t0=now(); for(int i=0;i<reps;i++) cblas_sgemm(CblasRowMajor,TA,TB,M,N,K,1.f,A,lda,B,ldb,0.f,C,N);
    g[r]=fl*reps/(now()-t0)/1e9; }
  qsort(g,R,sizeof(double),cmp);
  printf("{\"core\":\"%s\",\"threads\":%d,\"m\":%d,\"n\":%d,\"k\":%d,\"trans\":\"%s\",\"gflops\":%.2f,\"min\":%.2f,\"max\":%.2f}\n",openblas_get_corename(),th,M,N,K,tr,g[R/2],g[0],g[R-1]);
  return 0;
}
